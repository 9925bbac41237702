"""Object detectors for GenEval. The contract every detector plugin implements is `Detector`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from unirl_kit.types import Detection


@runtime_checkable
class Detector(Protocol):
    """Finds objects of known classes in images, batched.

    `classes` lists the class names it can report (None: any, e.g. precomputed detections);
    `default_color_classifier` names the colour classifier used when the user names none.
    `detect` gets the RGB images and their paths relative to the images folder (the
    precomputed detector looks detections up by path) and returns one list per image.
    Boxes are [x1, y1, x2, y2] with x2/y2 exclusive; masks are HxW bool arrays when available.
    """

    classes: Sequence[str] | None
    default_color_classifier: str

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        ...
