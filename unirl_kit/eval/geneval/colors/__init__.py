"""Colour classifiers for GenEval's colour checks. The contract is `ColorClassifier`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from unirl_kit.types import Detection


@runtime_checkable
class ColorClassifier(Protocol):
    """Names the colour of each found object of one class in one image.

    `colors` is the vocabulary it chooses from (GenEval's ten colours by default).
    """

    colors: Sequence[str]

    def classify(self, image: Image.Image, detections: Sequence[Detection], cls: str) -> list[str]:
        ...
