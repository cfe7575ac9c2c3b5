"""One writer per dataset: an exclusive ``flock`` on ``ROOT/.anyskill-writer.lock``.

Two writers appending to one dataset would each commit episodes the other then overwrites
(every commit rewrites the open data file and the totals in ``info.json``), so every
:class:`~anyskill.data.writer.EpisodeWriter` holds this lock for its lifetime. The kernel
drops a ``flock`` when the last descriptor of the open file goes away, so a writer killed by
SIGKILL or a power cut never leaves a stale lock behind, and no one has to delete the file.
The holder writes who it is (pid, host, command, since when) into the file so the refused
writer can say whom it is waiting for. Locks on two separate ``open`` calls conflict within
one process too, so two writers in one program are refused as well.

Readers take no lock: they only read what ``info.json`` has committed.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from anyskill.data.format import DatasetLockedError, write_failed

LOCK_NAME = ".anyskill-writer.lock"


class WriterLock:
    """The held lock of one dataset; :meth:`release` (or process exit) lets it go."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, root: Path) -> WriterLock:
        """Lock the dataset at ``root`` (a directory that exists) or raise
        :class:`DatasetLockedError` naming the holder."""
        path = Path(root) / LOCK_NAME
        try:
            # not O_TRUNC: the holder's description must survive until we hold the lock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_failed(
                root, e, "cannot take the writer lock, so this dataset cannot be written here"
            ) from e
        try:
            if not _try_lock(fd):
                # a writer of this process that nobody references any more may only be
                # waiting for the cycle collector to close its lock
                if _holder(fd).get("pid") == os.getpid():
                    gc.collect()
                if not _try_lock(fd):
                    raise DatasetLockedError(
                        root,
                        f"another writer is writing to this dataset ({_describe(_holder(fd))})",
                        "wait for it to finish or stop it, or write to another path",
                    )
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": shlex.join(sys.argv),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):  # e.g. a file system without flock, or a full disk
                raise write_failed(path, e, "cannot take the writer lock") from e
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __del__(self) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> dict:
    try:
        raw = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _describe(h: dict) -> str:
    if not h:
        return "holder unknown: it has not described itself yet"
    return (
        f"pid {h.get('pid', '?')} on host {h.get('host', '?')}, running "
        f"`{h.get('command', '?')}`, since {h.get('since', '?')}"
    )
