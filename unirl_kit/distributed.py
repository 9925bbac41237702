"""Process-group facts: one source of rank and world for every stage, and one way for ranks to wait.

Rank and world come from an initialised `torch.distributed` process group when there is one (a trainer,
or a user's own script that called `init_process_group`), else from the launcher's environment
(torchrun / accelerate set RANK and WORLD_SIZE). Non-training stages do not start a process group of
their own, so `unirl eval geneval` under torchrun needs no rendezvous: each rank writes its own part
and a marker file, and rank 0 waits for the markers and merges. Where a group exists, ranks meet at a
`torch.distributed` barrier instead of polling files. torch is never imported here: a stage that has
not imported it cannot have a process group.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any


def _process_group() -> Any:
    """`torch.distributed` when it is imported, available and initialised, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def rank_and_world() -> tuple[int, int]:
    dist = _process_group()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


RANK_TIMEOUT_S = 3600.0  # how long a rank waits for the others by default (`rank_timeout_s`)


def _poll(missing: Callable[[], str | None], timeout_s: float, what: str) -> None:
    """Every 0.2 s until `missing()` names nothing (None); past the deadline, an error naming it."""
    deadline = time.monotonic() + timeout_s
    while (gone := missing()) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {what}: {gone}; did a rank crash? rerun with the "
                               "same arguments to resume")
        time.sleep(0.2)


def wait_for_files(paths: list[Path], timeout_s: float, what: str, token: str | None = None) -> None:
    """Until every path exists (holding `token`, when given: a marker an earlier run left, for other
    work, does not count)."""
    _poll(lambda: next((f"{p} never appeared" for p in paths if not _holds(p, token)), None), timeout_s, what)


def _holds(path: Path, token: str | None) -> bool:
    if token is None:
        return path.exists()
    try:
        return path.read_text() == token
    except (OSError, UnicodeDecodeError):  # absent, or not written yet
        return False


def wait_for_ranks(markers: list[Path], timeout_s: float, what: str, token: str | None = None) -> None:
    """Every rank has finished its share: a barrier of the process group when one exists (each rank
    calls it), else rank 0 polls the ranks' marker files (each rank touched its own before); other
    ranks return at once, since rank 0 removes the markers once it has merged."""
    dist = _process_group()
    if dist is None:
        if rank_and_world()[0] == 0:
            wait_for_files(markers, timeout_s, what, token)
        return
    try:
        if dist.get_backend() == "gloo":  # gloo can name the rank that never arrived
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError as exc:
        raise TimeoutError(f"waited {timeout_s:.0f}s for {what} at a torch.distributed barrier: {exc}; "
                           "did a rank crash? rerun with the same arguments to resume") from exc


def wait_for_rank0(timeout_s: float, what: str, done: Callable[[], bool]) -> None:
    """Ranks > 0 wait until rank 0 has done something all need: a barrier of the process group when one
    exists (every rank calls, rank 0 once it is done), else ranks > 0 poll `done()`."""
    if _process_group() is not None:
        wait_for_ranks([], timeout_s, what)
        return
    if rank_and_world()[0] != 0:
        _poll(lambda: None if done() else "rank 0 has not finished", timeout_s, what)
