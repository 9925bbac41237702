"""One writer per output folder: the exclusive lock a stage holds on the folder it writes.

Two runs into one folder would both append every row (897 rows for 480 images, and every rerun then
failed). So a stage calls `lock_output(folder)` where it sets its folder up, inside its entry point
decorated with `@holds_output_locks`, which releases the lock when the stage returns or raises.

The lock is a POSIX record lock (`fcntl.lockf`) on byte RANK of `FOLDER/.unirl.lock`: the ranks of
one torchrun job lock different bytes and never block each other, while rank r of a second job meets
rank r of the first (every job has a rank 0). The kernel drops a lock when its process dies, so the
file a killed run leaves never blocks a resume. While rank 0 holds the lock the file names its pid
and host (emptied on release, so a finished folder's files stay byte-identical across runs).

POSIX locks belong to a process, and closing any descriptor of the file drops them: the table below
keeps one descriptor per lock file, and a stage may re-enter a folder its own process already holds
(the loop runs the stages in-process, each in a subfolder of its own locked folder).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from unirl_kit.distributed import rank_and_world
from unirl_kit.types import InputError

LOCK_NAME = "unirl.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a filesystem without record locks

Fn = TypeVar("Fn", bound=Callable[..., Any])


@dataclass
class _Held:
    fd: int
    pid: int  # a forked child inherits this table but not the lock
    count: int = 0
    named: bool = False  # this process wrote its pid and host into the file


_held: dict[str, _Held] = {}  # lock file (real path) -> its descriptor in this process
_scopes: list[list[str]] = []  # per running stage, the lock files it entered


def lock_path(folder: Path, prefix: str = "") -> Path:
    """`.unirl.lock` for a folder output; `.X.unirl.lock` for a file output X.* (prefix "X.")."""
    return Path(folder) / f".{prefix}{LOCK_NAME}"


def holds_output_locks(fn: Fn) -> Fn:
    """Decorate a stage's entry point: every lock it takes is released when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _scopes.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for key in reversed(_scopes.pop()):
                _release(key)

    return wrapper  # type: ignore[return-value]


def lock_output(folder: Path, prefix: str = "") -> Path:
    """Make `folder` and hold its lock (this rank's byte) until the enclosing stage returns.

    Another live run holding it is an InputError naming the folder and the holder: failing before
    anything is written is what keeps rows from being written twice.
    """
    if not _scopes:
        raise RuntimeError("lock_output must be called inside a function decorated with @holds_output_locks")
    folder = Path(folder)
    _make_folder(folder)
    path = lock_path(folder, prefix)
    key = os.path.realpath(path)
    held = _held.get(key)
    if held is None or held.pid != os.getpid():
        held = _held[key] = _acquire(path, folder)
    held.count += 1
    _scopes[-1].append(key)
    return path


def make_output_file_folder(path: Path, label: str) -> None:
    """Make the folder an output file goes in (for commands that write one file and hold no lock), or
    one InputError: `path` is a folder, or a file stands where the folder (or a parent) should be."""
    if Path(path).is_dir():
        raise InputError(f"{label} {path}: is a folder; give the file to write")
    _make_folder(Path(path).parent)


def _make_folder(folder: Path) -> None:
    """The output folder, or a one-line error when a file stands where it (or a parent) should be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{folder}: is a file (or inside one), not a folder; give an output folder") from None
    except PermissionError:
        raise InputError(f"{folder}: permission denied creating the output folder") from None


def _acquire(path: Path, folder: Path) -> _Held:
    """Lock this rank's byte of the lock file without waiting; rank 0 then names itself in the file."""
    rank, _ = rank_and_world()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise InputError(f"{folder}: permission denied creating its lock file {path.name}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            print(f"warning: {folder}: this filesystem cannot lock {path.name} ({exc.strerror}); "
                  "a second run into this folder would not be refused", file=sys.stderr)
            return _Held(fd, os.getpid())
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise InputError(f"{folder}: another run is writing it ({holder}, lock {path.name}); wait for it to "
                         "finish or give another output folder") from None
    if rank != 0:
        return _Held(fd, os.getpid())
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    return _Held(fd, os.getpid(), named=True)


def _holder(fd: int) -> str:
    """`pid P on host H` from the lock file, as its rank 0 wrote it (unknown in the instant before)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on host {info['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "pid unknown"


def _release(key: str) -> None:
    """Leave a lock entered once; the last leave empties the holder's note and closes the file."""
    held = _held[key]
    held.count -= 1
    if held.count > 0:
        return
    del _held[key]
    if held.named:
        os.ftruncate(held.fd, 0)  # still locked here: no other run can have written its own note yet
    os.close(held.fd)  # drops the lock
