"""`shapes` detector plugin: the analytic detector of the shapes world."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.types import Detection
from unirl_kit.worlds.shapes.analyze import detect_shapes
from unirl_kit.worlds.shapes.vocab import SHAPES


class ShapesDetector(Detector):
    """Analytic detector of the shapes world: exact on clean renders, no model."""

    classes: Sequence[str] = SHAPES
    default_color_classifier = "shapes"

    def __init__(self, max_color_distance: float = 90.0, min_area: int = 32, full_score_iou: float = 0.85,
                 max_object_distance: float = 40.0):
        self.options = dict(max_color_distance=max_color_distance, min_area=min_area, full_score_iou=full_score_iou,
                            max_object_distance=max_object_distance)

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        return [detect_shapes(np.asarray(img.convert("RGB")), **self.options) for img in images]
