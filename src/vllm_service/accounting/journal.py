"""The ledger's journal: rows written to a local file before the response's last byte leaves,
moved into the database off the hot path, so that a crash loses no row a client received.

Each process appends to ``<root>/<pid>-<token>/active.jsonl`` (one ``write()`` of one JSON line
per row; no fsync unless asked) and holds an exclusive lock on that directory's ``lock`` file.
The writer seals the active file (a rename: appends go to a fresh one), commits the sealed
file's rows, then deletes it. At start, a process takes over the directories whose owner is
gone (their lock is free) and replays them. Rows carry their own id, and the database ignores
an id it already has, so a replay after a crash between commit and delete duplicates nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ACTIVE = "active.jsonl"


class Journal:
    """This process's journal: append rows, seal them for the writer, bounded in bytes."""

    def __init__(self, root: Path, *, max_bytes: int, fsync: bool = False) -> None:
        self.root = root
        self.dir = root / f"{os.getpid()}-{os.urandom(4).hex()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.dir / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.max_bytes = max_bytes
        self.fsync = fsync
        #: Bytes of rows not yet committed (active and sealed files).
        self.bytes = 0
        #: Rows refused because the journal was full: must stay 0 (an alert fires otherwise).
        self.dropped = 0
        self._seq = 0
        self._active_rows = 0
        self._fd = self._open_active()

    def _open_active(self) -> int:
        return os.open(self.dir / ACTIVE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, row: dict[str, Any]) -> bool:
        """Write one row; False (and counted) when the journal is full."""
        data = json.dumps(row, separators=(",", ":")).encode() + b"\n"
        if self.bytes + len(data) > self.max_bytes:
            self.dropped += 1
            return False
        os.write(self._fd, data)
        if self.fsync:
            os.fsync(self._fd)
        self.bytes += len(data)
        self._active_rows += 1
        return True

    def seal(self) -> None:
        """Close the active file to appends (the writer takes it); a fresh one takes over."""
        if not self._active_rows:
            return
        os.close(self._fd)
        self._seq += 1
        (self.dir / ACTIVE).rename(self.dir / f"sealed-{self._seq:012d}.jsonl")
        self._fd = self._open_active()
        self._active_rows = 0

    def sealed(self) -> list[Path]:
        """Sealed files, oldest first."""
        return sorted(self.dir.glob("sealed-*.jsonl"))

    def committed(self, path: Path) -> None:
        """A sealed file's rows are in the database: drop it."""
        self.bytes -= path.stat().st_size
        path.unlink()

    def close(self) -> None:
        """Release the journal; an empty one is removed, a non-empty one is left for replay."""
        os.close(self._fd)
        if not self._active_rows:
            (self.dir / ACTIVE).unlink(missing_ok=True)
        empty = not any(self.dir.glob("*.jsonl"))
        if empty:
            (self.dir / "lock").unlink(missing_ok=True)
        os.close(self._lock)
        if empty:
            self.dir.rmdir()


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a journal file; a torn last line (a crash mid-write) is skipped."""
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def orphans(root: Path) -> Iterator[tuple[Path, int]]:
    """Journal directories whose owner is gone, each locked for us (the fd to release)."""
    if not root.is_dir():
        return
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            fd = os.open(directory / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live process owns it
            continue
        yield directory, fd
