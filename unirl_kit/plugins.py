"""Built-in plugins, registered lazily ("module:object") so listing them imports no torch."""

from __future__ import annotations

from unirl_kit.registry import REGISTRIES

_D = "unirl_kit.eval.geneval.detectors"
_C = "unirl_kit.eval.geneval.colors"

REGISTRIES["detectors"].register(
    "shapes", f"{_D}.shapes:ShapesDetector",
    description="analytic detector of the shapes world: exact on clean renders, no model",
)
REGISTRIES["detectors"].register(
    "precomputed", f"{_D}.precomputed:PrecomputedDetector",
    description="reads detections from a JSONL file made elsewhere (another env or machine)",
)
REGISTRIES["detectors"].register(
    "mask2former", f"{_D}.mask2former:Mask2FormerDetector",
    description="transformers Mask2Former with mmdet's pre/post-processing (GenEval's reference detector)",
)
REGISTRIES["detectors"].register(
    "mmdet", f"{_D}.mmdet:MMDetDetector",
    description="adapter to mmdet's init_detector/inference_detector (needs its own venv with mmcv)",
)
REGISTRIES["color_classifiers"].register(
    "clip", f"{_C}.clip:ClipColorClassifier",
    description="open_clip zero-shot colour, GenEval's templates, grey compositing and crop",
)
REGISTRIES["color_classifiers"].register(
    "shapes", f"{_C}.shapes:ShapesColorClassifier",
    description="nearest palette colour of the object's pixels (shapes world)",
)
REGISTRIES["color_classifiers"].register(
    "precomputed", f"{_C}.precomputed:PrecomputedColorClassifier",
    description="uses each detection's own `color` field (precomputed detections)",
)
REGISTRIES["backbones"].register(
    "janus", "unirl_kit.backbones.janus:JanusBackbone",
    description="Janus / Janus-Pro in the transformers format (--model PATH); batched CFG sampler",
)
