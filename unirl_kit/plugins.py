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
REGISTRIES["backbones"].register(
    "showo", "unirl_kit.backbones.showo.backbone:ShowoBackbone",
    description="Show-o (Phi-1.5 + MAGVIT-v2, masked diffusion; --model DIR in the published layout)",
)
REGISTRIES["backbones"].register(
    "tiny-shapes", "unirl_kit.backbones.tiny_shapes.backbone:TinyShapesBackbone",
    description="the embedded default: a tiny Janus trained on the shapes world, shipped in the package",
)
REGISTRIES["rewards"].register(
    "remote", "unirl_kit.rewards.remote:RemoteReward",
    description="scores through a reward server (`unirl serve reward`) in another env or machine; reward_options.remote.url=...",
)
REGISTRIES["rewards"].register(
    "self-qa", "unirl_kit.rewards.self_qa:SelfQAReward",
    description="the policy answers UniRL's question about its own image; graded credit 0..1 (needs backbone)",
)
REGISTRIES["rewards"].register(
    "self-qa-likelihood", "unirl_kit.rewards.self_qa:SelfQALikelihoodReward",
    description="the policy's own probability of the true answer about its image, exp(mean log p) (needs backbone)",
)
REGISTRIES["rewards"].register(
    "self-caption", "unirl_kit.rewards.self_judges:SelfCaptionReward",
    description="log P(prompt | own image, 'Describe the image.'); score=share: against the prompt's minimal edits (needs backbone)",
)
REGISTRIES["rewards"].register(
    "self-qa-contrast", "unirl_kit.rewards.self_judges:SelfQAContrastReward",
    description="P(true answer | own image, question) against the answers of the prompt's minimal edits (needs backbone)",
)
REGISTRIES["rewards"].register(
    "self-ensemble", "unirl_kit.rewards.self_judges:SelfEnsembleReward",
    description="log P(prompt | own image) + log P(true answer | own image, question): the best-ranking self-judge measured (needs backbone)",
)
REGISTRIES["rewards"].register(
    "geneval", "unirl_kit.rewards.geneval_reward:GenevalReward",
    description="GenEval's verdict, 1 or 0, with eval geneval's detector, colour classifier and rules",
)
REGISTRIES["rewards"].register(
    "geneval-partial", "unirl_kit.rewards.geneval_reward:GenevalPartialReward",
    description="GenEval with partial credit: the share of include/exclude requirements met",
)
REGISTRIES["rewards"].register(
    "clip-score", "unirl_kit.rewards.clip_score:ClipScoreReward",
    description="CLIPScore, 2.5 * max(cos(image, prompt), 0), open_clip from local weights (no download)",
)
