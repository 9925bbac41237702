"""Process-group facts read from the launcher's environment (torchrun / accelerate set them).

File-based coordination keeps evaluation and scoring free of a torch.distributed dependency:
each rank writes its own part and a marker; rank 0 waits for the markers and merges.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def wait_for_files(paths: list[Path], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {what}: {missing[0]} never appeared; "
                               "did a rank crash? rerun with the same arguments to resume")
        time.sleep(0.2)
