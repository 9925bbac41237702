"""Randomly initialised Janus models (the tiny-shapes architecture, or a mid-size one) for tests/benchmarks.

Built with tiny-shapes' own config, tokenizer and processor builders, so `janus` loads them through
its real path (`save_pretrained` folder). Their images are noise; their numerics are what is tested.
"""

from __future__ import annotations

from pathlib import Path

# A mid-size Janus for benchmarks: 576 image tokens (24x24, as Janus-Pro) and a 16,384 codebook.
MID_SIZE = {"text_hidden": 512, "text_layers": 8, "image_size": 96, "codebook_size": 16384}


def random_janus(text_hidden: int = 256, text_layers: int = 4, image_size: int = 64, codebook_size: int = 512,
                 seed: int = 0):
    """(model in eval mode, processor): the VQ downsamples 4x, so (image_size / 4)^2 image tokens."""
    import torch
    from transformers import JanusForConditionalGeneration

    from unirl_kit.backbones.tiny_shapes.build import build_config, build_processor
    from unirl_kit.pretrain.tokenizer import TokenizerConfig, build_vq

    torch.manual_seed(seed)
    vq = build_vq(TokenizerConfig(image_size=image_size, codebook_size=codebook_size)).config.to_dict()
    config = build_config(vq, text_hidden=text_hidden, text_layers=text_layers)
    tokens = (image_size // 4) ** 2
    config.vision_config.image_size, config.vision_config.patch_size = image_size, 4
    config.vision_config.num_image_tokens = tokens
    config.text_config.max_position_embeddings = max(512, 2 * tokens)
    processor = build_processor()
    processor.num_image_tokens = tokens
    processor.image_processor.size = {"height": image_size, "width": image_size}
    return JanusForConditionalGeneration(config).eval(), processor


def save_random_janus(path: str | Path, **options) -> Path:
    """`random_janus(**options)` written as an HF-style folder (safetensors + tokenizer + processor)."""
    model, processor = random_janus(**options)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
