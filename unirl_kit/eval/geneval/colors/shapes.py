"""`shapes` colour classifier: nearest palette colour of the object's pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from unirl_kit.types import Detection
from unirl_kit.worlds.shapes.analyze import object_color
from unirl_kit.worlds.shapes.vocab import COLORS


class ShapesColorClassifier:
    """Nearest palette colour of the mean of the object's non-background pixels (shapes world)."""

    colors: Sequence[str] = COLORS

    def classify(self, image: Image.Image, detections: Sequence[Detection], cls: str) -> list[str]:
        pixels = np.asarray(image.convert("RGB"))
        return [object_color(pixels, d.mask, d.box) for d in detections]
