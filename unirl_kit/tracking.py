"""Experiment tracking: `report_to` (TRL's word) names where a run's scalars and images go.

- `jsonl`: `metrics.jsonl` beside the run (one line per logged step; what `unirl loop`'s report reads),
  images as PNG files under `images/`;
- `tensorboard`: event files under `tensorboard/` (a dependency of unirl-kit);
- `wandb`: a Weights & Biases run (`pip install 'unirl-kit[wandb]'`), its files under `wandb/`;
  project from $WANDB_PROJECT (default `unirl-kit`); WANDB_MODE=offline logs without an account.

A backend that is asked for but not installed is an error before any work, never a silent skip.
Only rank 0 tracks. A resumed run first drops what was logged past its checkpoint (jsonl lines,
TensorBoard events via `purge_step`), so a curve never holds two runs' values for one step.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.types import InputError

BACKENDS = ("jsonl", "tensorboard", "wandb")
DEFAULT_REPORT_TO = ("jsonl", "tensorboard")
_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install 'unirl-kit[wandb]'"}


def as_list(report_to: Sequence[str] | str) -> list[str]:
    """report_to as a list: one name may be given alone (`report_to=wandb`, as TRL takes it); `none`: []."""
    if isinstance(report_to, str):
        return [] if report_to == "none" else [report_to]
    return list(report_to)


def check_report_to(report_to: Sequence[str], key: str) -> None:
    """Known backends, each once, and installed; the error names `key` (e.g. `run.report_to`)."""
    for name in report_to:
        if name not in BACKENDS:
            raise InputError(f"{key}: {name!r} is not one of {', '.join(BACKENDS)}")
        if list(report_to).count(name) > 1:
            raise InputError(f"{key}: {name} is given twice")
        if name in _INSTALL and importlib.util.find_spec(name) is None:
            raise InputError(f"{key}: {name} is not installed; {_INSTALL[name]} (or leave {name} out of {key})")


def with_old_tensorboard_key(report_to: list[str], tensorboard: bool, key: str) -> list[str]:
    """report_to for a config that still sets the old `tensorboard: true/false`: false drops
    tensorboard from the default backends, true keeps it; next to a report_to of its own it must agree."""
    has = "tensorboard" in report_to
    if list(report_to) == list(DEFAULT_REPORT_TO):
        return list(report_to) if tensorboard else [b for b in report_to if b != "tensorboard"]
    if has != tensorboard:
        raise InputError(f"{key}.tensorboard: the old key ({str(tensorboard).lower()}) contradicts {key}.report_to "
                         f"({list(report_to)}); drop {key}.tensorboard and list the backends in {key}.report_to")
    return list(report_to)


def _step_of(line: str) -> int:
    try:
        return int(parse_json(line, "metrics.jsonl")["step"])
    except (ValueError, KeyError, TypeError, OverflowError):  # InputError is a ValueError
        return 1 << 60  # a torn line: dropped


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The scalars of a row (bools and text left out), without `step`."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"}


def _pixels(image: Any) -> Any:
    """An HWC uint8 RGB array from an array or a PIL image."""
    import numpy as np

    if hasattr(image, "convert"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


class MetricsLog:
    """`jsonl`: metrics.jsonl, one line per logged step (a resumed run first drops lines past its
    checkpoint), and images as `images/<tag>/<step>.png`."""

    def __init__(self, out: Path, resumed_step: int = 0) -> None:
        self.out = Path(out)
        self.path = self.out / "metrics.jsonl"
        if self.path.exists():
            keep = [ln for _, ln in iter_lines(self.path) if _step_of(ln) <= resumed_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **{k: v for k, v in values.items() if k != "step"}}) + "\n")

    def image(self, tag: str, step: int, pixels: Any) -> None:
        from PIL import Image

        from unirl_kit.eval.geneval.layout import save_png_atomic

        path = self.out / "images" / tag / f"{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png_atomic(Image.fromarray(pixels), path)

    def close(self) -> None:
        pass


class _TensorBoard:
    def __init__(self, out: Path, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what an earlier (killed) run logged from this step on
        self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resumed_step + 1)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        for key, value in _numbers(values).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, tag: str, step: int, pixels: Any) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out: Path, name: str | None, config: dict[str, Any] | None) -> None:
        import wandb

        self.wandb = wandb
        try:  # create_new: the loop's run stays open while each round's trainer has its own
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "unirl-kit"), name=name, dir=str(out),
                                  config=config, reinit="create_new")
        except Exception as exc:  # not logged in, no network: wandb's own errors vary by version
            message = " ".join(str(exc).split())
            raise InputError(f"report_to wandb: wandb.init failed ({message}); run `wandb login`, or set "
                             "WANDB_MODE=offline to log locally") from None

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        self.run.log(_numbers(values), step=step)

    def image(self, tag: str, step: int, pixels: Any) -> None:
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fans `log_scalars` and `log_image` out to the `report_to` backends (checked by check_report_to).

    `out` is the run's folder; `resumed_step` the checkpoint a resumed run continues from (0: fresh);
    `config` (the resolved settings) and `name` label the W&B run."""

    def __init__(self, out: Path, report_to: Sequence[str], resumed_step: int = 0,
                 config: dict[str, Any] | None = None, name: str | None = None) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        self.backends: list[Any] = []
        try:
            for backend in report_to:
                if backend == "jsonl":
                    self.backends.append(MetricsLog(out, resumed_step))
                elif backend == "tensorboard":
                    self.backends.append(_TensorBoard(out, resumed_step))
                elif backend == "wandb":
                    self.backends.append(_Wandb(out, name or str(out), config))
                else:
                    raise InputError(f"report_to: {backend!r} is not one of {', '.join(BACKENDS)}")
        except BaseException:
            self.close()
            raise

    def log_scalars(self, step: int, values: dict[str, Any]) -> None:
        """One step's values to every backend: jsonl keeps the whole row, the others its numbers."""
        for backend in self.backends:
            backend.scalars(step, values)

    def log_image(self, tag: str, step: int, image: Any) -> None:
        """An image (HWC uint8 array or PIL image) under `tag` at `step`."""
        pixels = _pixels(image)
        for backend in self.backends:
            backend.image(tag, step, pixels)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
