"""Object detectors for GenEval. The contract every detector plugin implements is `Detector`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from unirl_kit.types import Detection, InputError


@runtime_checkable
class Detector(Protocol):
    """Finds objects of known classes in images, batched.

    `classes` lists the class names it can report (None: any, e.g. precomputed detections);
    `default_color_classifier` names the colour classifier used when the user names none.
    `detect` gets the RGB images and their paths relative to the images folder (the
    precomputed detector looks detections up by path) and returns one list per image.
    Boxes are [x1, y1, x2, y2] with x2/y2 exclusive; masks are HxW bool arrays when available.
    `check_filenames` runs once before any image is scored, so a detector that can only score some
    files (precomputed detections) fails fast; one that reads pixels accepts all (the default here).

    Subclass it to inherit that default: a plugin class is checked against every member at build.
    """

    classes: Sequence[str] | None
    default_color_classifier: str

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        ...

    def check_filenames(self, filenames: Sequence[str]) -> None:
        """Raise InputError naming the first of `filenames` this detector cannot score."""
        return None


def check_detector(detector: object, name: str) -> Detector:
    """`detector` as a Detector, or a one-line error naming what the plugin lacks."""
    missing = [m for m in ("classes", "default_color_classifier", "detect", "check_filenames")
               if not hasattr(detector, m)]
    if missing:
        raise InputError(f"detector {name!r} ({type(detector).__module__}.{type(detector).__name__}) lacks "
                         f"{', '.join(missing)}; subclass unirl_kit.eval.geneval.detectors.Detector")
    return detector  # type: ignore[return-value]
