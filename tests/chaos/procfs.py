"""What this process holds, read from ``/proc``: file descriptors, child processes, memory.

``psutil`` is not a dependency, and ``/proc`` says all a leak check needs on Linux.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["alive", "child_pids", "descendant_pids", "fd_count", "open_sockets", "rss_kib"]


def fd_count(pid: int | None = None) -> int:
    """Open file descriptors of ``pid`` (default: this process)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def open_sockets(pid: int | None = None) -> int:
    """How many of ``pid``'s descriptors are sockets."""
    base = Path(f"/proc/{pid or os.getpid()}/fd")
    count = 0
    for entry in base.iterdir():
        try:
            if os.readlink(entry).startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


def child_pids(pid: int | None = None) -> set[int]:
    """Live direct children of ``pid``, from ``/proc/<pid>/task/*/children`` (zombies excluded)."""
    pid = pid or os.getpid()
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        found.update(int(part) for part in text.split())
    return {child for child in found if alive(child)}


def descendant_pids(pid: int | None = None) -> set[int]:
    """Live children of ``pid``, their children, and so on."""
    seen: set[int] = set()
    todo = list(child_pids(pid))
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        try:
            todo.extend(child_pids(child))
        except OSError:
            continue
    return seen


def rss_kib(pid: int | None = None) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
