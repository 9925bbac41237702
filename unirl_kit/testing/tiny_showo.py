"""A random Show-o folder in the published layout, for tests and benchmarks (no download possible here).

The text tokenizer is the shapes world's word-level one standing in for phi-1.5's; `llm_vocab_size`
is its length, so Show-o's ten special tokens, the codebook and the mask token follow it exactly as
they follow phi's 50,295 entries in the real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_showo(path: Path, seed: int = 0, num_vq_tokens: int = 16, hidden: int = 32, layers: int = 2,
                      heads: int = 4, vq_ch: int = 32) -> Path:
    """Show-o + magvitv2/ + tokenizer in `path` (64 px images at 16 tokens; codebook 64)."""
    from unirl_kit.backbones.showo.magvitv2 import MagvitV2, MagvitV2Config, save_magvitv2
    from unirl_kit.backbones.showo.model import PHI_1_5, Showo, ShowoConfig, save_showo
    from unirl_kit.backbones.tiny_shapes.build import build_tokenizer

    path = Path(path)
    tok = build_tokenizer()
    tok.bos_token = tok.eos_token  # as phi: <|endoftext|> opens and closes texts
    torch.manual_seed(seed)
    vq_cfg = MagvitV2Config.tiny()
    if vq_ch != vq_cfg.ch:
        vq_cfg = MagvitV2Config.from_dict({**vq_cfg.to_dict(), "ch": vq_ch})
    vq = MagvitV2(vq_cfg)
    codebook = vq_cfg.codebook_size
    llm = {**PHI_1_5, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 1024}
    cfg = ShowoConfig(vocab_size=len(tok) + 10 + codebook + 1, llm_vocab_size=len(tok), codebook_size=codebook,
                      num_vq_tokens=num_vq_tokens, llm_config=llm)
    save_showo(Showo(cfg), path)
    save_magvitv2(vq, path / "magvitv2")
    tok.save_pretrained(path)
    return path
