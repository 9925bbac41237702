"""A rich progress line for trainers: step, reward, loss, step time; silent when disabled (tests, ranks > 0)."""

from __future__ import annotations

from typing import Any


class StepProgress:
    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.bar = self.task = None

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"))
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self.bar is None:
            return
        keys = [k for k in ("reward/mean", "und_reward/mean", "loss/gen", "loss/und", "loss/sft") if k in metrics]
        info = " ".join(f"{k.split('/')[0] if k.endswith('mean') else k}={metrics[k]:.3f}" for k in keys)
        seconds = sum(v for k, v in metrics.items() if k.startswith("time/"))
        self.bar.update(self.task, completed=step, info=f"{info} {seconds:.1f}s/step")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
