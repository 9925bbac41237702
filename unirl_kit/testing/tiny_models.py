"""Tiny, randomly initialised Mask2Former and open_clip models, saved exactly as real ones are loaded.

The detector and colour classifier plugins load these through their normal code paths
(`save_pretrained` directory; open_clip config JSON + safetensors weights), so tests and benchmarks
exercise real loading without downloading weights. Scores from them are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16},
    # vocab_size must stay 49408: open_clip's SimpleTokenizer emits ids up to that
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_mask2former(path: str | Path, seed: int = 0, num_labels: int = 80) -> Path:
    """A ~0.35M-parameter Mask2Former (Swin backbone, 10 queries) saved with `save_pretrained`."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from unirl_kit.eval.geneval.detectors.mask2former import packaged_class_names

    coco = packaged_class_names()
    names = [coco[i] if i < len(coco) else f"class_{i}" for i in range(num_labels)]
    backbone = SwinConfig(
        image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    # widths stay multiples of 32: the pixel decoder uses GroupNorm(32)
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
        dim_feedforward=32, num_queries=10, num_labels=num_labels,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def save_tiny_clip(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """(config JSON, safetensors weights) of a tiny open_clip ViT: load with model=JSON, pretrained=W."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "unirl-tiny-clip.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_CLIP_CONFIG)))
    weights_path = directory / "unirl-tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    return config_path, weights_path
