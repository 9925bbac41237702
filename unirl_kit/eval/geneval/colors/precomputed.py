"""`precomputed` colour classifier: each detection already carries its colour."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from unirl_kit.types import GENEVAL_COLORS, Detection, InputError


class PrecomputedColorClassifier:
    """Uses each detection's own `color` field (precomputed detections)."""

    colors: Sequence[str] = GENEVAL_COLORS

    def classify(self, image: Image.Image, detections: Sequence[Detection], cls: str) -> list[str]:
        missing = [d for d in detections if d.color is None]
        if missing:
            raise InputError(
                f"a {cls!r} detection has no 'color' field; add colours to the detections file "
                "or name a colour classifier (--color-classifier clip)"
            )
        return [str(d.color) for d in detections]
