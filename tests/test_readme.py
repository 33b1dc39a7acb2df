"""The README's embedding example runs as written (against the simulator)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"## Embedding the runtime without the server\n\n```python\n(.*?)```",
                      readme, re.S)
    assert found, "the README lost its embedding example"
    script = tmp_path / "example.py"
    script.write_text(found.group(1))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Echo: Hello sim ")
    assert lines[1] == "Echo: Hello again"
    assert lines[2] == "2 ok"
