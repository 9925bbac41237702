"""One progress display for every long stage (generate, score, eval, train, loop).

On a terminal it is a rich bar. Where stderr is no terminal (nohup, SLURM, CI, a pipe) a bar draws
nothing until the end, so a log file stayed blank for minutes; there it is a plain `logging` line on
the stage's logger (`unirl_kit.<stage>`) every `UNIRL_LOG_EVERY_S` seconds (default 30) while a task
runs, and one when it ends: done/total, rate and ETA. The periodic lines come from a timer thread, so
they appear even while one long batch or training step is running. Nothing is written when a task
starts: a command that fails on bad input within its first interval still prints one `error:` line.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any

from unirl_kit.types import InputError

EVERY_ENV = "UNIRL_LOG_EVERY_S"
DEFAULT_EVERY_S = 30.0


def log_every_s() -> float:
    """Seconds between two progress lines in a log: $UNIRL_LOG_EVERY_S, else 30."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{EVERY_ENV}: expected a positive number of seconds, got {raw!r}")
    return value


def interactive() -> bool:
    """Whether a bar can be drawn: stderr is a terminal (rich's test, which honours FORCE_COLOR and
    TTY_COMPATIBLE) or a Jupyter notebook."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.is_terminal or console.is_jupyter


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Task:
    """One counted piece of work (`total` `unit`s); `advance` or `update` it as work is done."""

    def __init__(self, owner: Progress, label: str, total: float, unit: str, completed: float) -> None:
        self.owner, self.label, self.total, self.unit = owner, label, total, unit
        self.completed, self.info = completed, ""
        self.first, self.t0 = completed, time.perf_counter()
        self.bar_id: Any = None
        self.reported_done = False

    @property
    def finished(self) -> bool:
        return self.completed >= self.total

    def advance(self, n: float = 1) -> None:
        self.update(self.completed + n)

    def update(self, completed: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = min(float(completed), float(self.total))
        if info is not None:
            self.info = info
        self.owner.changed(self)

    def rate(self) -> str:
        """`12.50 images/s`, or `3.2 s/step` below one unit a second; "" before any work is done."""
        done, elapsed = self.completed - self.first, time.perf_counter() - self.t0
        if done <= 0 or elapsed <= 0:
            return ""
        per_s = done / elapsed
        return f"{per_s:.2f} {self.unit}/s" if per_s >= 1 else f"{1 / per_s:.1f} s/{self.unit.rstrip('s')}"

    def line(self) -> str:
        """The plain progress line a log shows."""
        share = 100.0 * self.completed / self.total if self.total else 100.0
        parts = [f"{self.label}: {int(self.completed)}/{self.total:g} {self.unit} ({share:.0f}%)"]
        rate = self.rate()
        if rate:
            parts.append(rate)
        done, elapsed = self.completed - self.first, time.perf_counter() - self.t0
        if self.finished:
            parts.append(f"done in {_clock(elapsed)}")
        elif done > 0:
            parts.append(f"ETA {_clock((self.total - self.completed) * elapsed / done)}")
        if self.info:
            parts.append(self.info)
        return ", ".join(parts)


class Progress:
    """The stage's progress: `with Progress("generate", enabled) as p: task = p.task(...)`.

    Disabled (progress=false, ranks > 0) it shows nothing. `bar=False`: no bar on a terminal (a stage
    whose inner stages draw their own, as the loop), log lines still where there is no terminal."""

    def __init__(self, stage: str, enabled: bool = True, *, bar: bool = True, transient: bool = True) -> None:
        self.log = logging.getLogger(f"unirl_kit.{stage}")
        self.enabled, self.want_bar, self.transient = enabled, bar, transient
        self.mode: str | None = None  # "bar" | "log" | None (silent)
        self.tasks: list[Task] = []
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        if interactive():
            if self.want_bar:
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
                from rich.progress import Progress as RichProgress

                self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                         TextColumn("{task.fields[info]}"), transient=self.transient)
                self._bar.__enter__()
                self.mode = "bar"
            return self
        every = log_every_s()
        self.mode = "log"
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True, name=self.log.name)
        self._thread.start()
        return self

    def task(self, label: str, total: float, unit: str = "items", completed: float = 0) -> Task:
        """A new task of `total` units, `completed` of them done already (a resumed run)."""
        task = Task(self, label, total, unit, completed)
        task.reported_done = task.finished  # nothing to do: no line
        self.tasks.append(task)
        if self.mode == "bar" and total > 0:
            task.bar_id = self._bar.add_task(label, total=total, completed=completed, rate="", info="")
        return task

    def changed(self, task: Task) -> None:
        if self.mode == "bar" and task.bar_id is not None:
            self._bar.update(task.bar_id, completed=task.completed, rate=task.rate(), info=task.info)
        elif self.mode == "log" and task.finished and not task.reported_done:
            task.reported_done = True
            self.log.info(task.line())

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            for task in list(self.tasks):
                if not task.finished:
                    self.log.info(task.line())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self._bar is not None:
            self._bar.__exit__(*exc)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted: under a live rich bar that is rich's
    proxy, so a line logged meanwhile prints above the bar instead of through it."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging() -> None:
    """The `unirl` command's handler: INFO lines of `unirl_kit.*` to stderr with a timestamp (once)."""
    logger = logging.getLogger("unirl_kit")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
