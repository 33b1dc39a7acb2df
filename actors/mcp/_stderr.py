"""A stdio MCP server's stderr, through a pipe: logged at DEBUG (redacted), its last bytes kept
for errors.

Control characters are shown escaped (``\\x1b``): the tail reaches the log (the supervisor's line
for a lost session), where a terminal obeyed a server's escape sequences (erase a line, move
up, write a forged one), as did the DEBUG lines; bidirectional overrides likewise.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Final, TextIO

import anyio

from runtime.text import escape_controls

__all__ = ["StderrTail"]

logger = logging.getLogger(__name__)

_STDERR_TAIL_BYTES: Final = 2000


class StderrTail:
    """The server's stderr, through a pipe: logged at DEBUG, its last bytes kept for errors.

    ``redact`` masks the secrets of each line logged (the tail is redacted where it is shown).
    """

    def __init__(self, server: str, redact: Callable[[str], str]) -> None:
        self._server = server
        self._redact = redact
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        self._pipe_inode = os.fstat(read_fd).st_ino
        # Handed to the child as its stderr; the SDK wants a TextIO, the child only its fd.
        self.writer: TextIO = os.fdopen(write_fd, "w")
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.eof = anyio.Event()

    def close_writer(self) -> None:
        if not self.writer.closed:
            self.writer.close()

    def close(self) -> None:
        """Close both ends; idempotent (a pump cancelled before it ran never closed its end)."""
        self.close_writer()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    async def pump(self) -> None:
        """Read until end-of-file (every writer closed) or cancellation, then close the pipe."""
        try:
            while True:
                await anyio.wait_readable(self._read_fd)
                try:
                    data = os.read(self._read_fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                self._record(data)
        finally:
            self.close()
            self.eof.set()

    def _record(self, data: bytes) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            for line in data.decode(errors="replace").splitlines():
                logger.debug("MCP server %r stderr: %s", self._server,
                             escape_controls(self._redact(line)))
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= _STDERR_TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def tail(self) -> str:
        """The last lines the server wrote to stderr, joined with `` | ``."""
        text = b"".join(self._tail)[-_STDERR_TAIL_BYTES:].decode(errors="replace")
        lines = (line.strip() for line in text.splitlines())
        return escape_controls(" | ".join(line for line in lines if line))

    def find_child_pid(self) -> int | None:
        """The pid of our child process whose stderr is this pipe (Linux ``/proc``), if any.

        The SDK does not expose the process it spawns; the pipe identifies it exactly.
        """
        target = f"pipe:[{self._pipe_inode}]"
        try:
            threads = os.listdir("/proc/self/task")
        except OSError:
            return None
        for thread in threads:
            try:
                with open(f"/proc/self/task/{thread}/children") as children:
                    pids = children.read().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    if os.readlink(f"/proc/{pid}/fd/2") == target:
                        return int(pid)
                except OSError:
                    continue
        return None
