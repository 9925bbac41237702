"""Stage 1 of tiny-shapes: train Janus's own VQ tokenizer class (`JanusVQVAE`) on shapes scenes.

`JanusVQVAE.forward` cannot train as shipped (its decode looks codes up again by index and
L2-normalises them, so no gradient reaches the encoder). This trains the same modules with cosine
vector quantisation: encoder outputs and codes are L2-normalised, nearest code by cosine, a
straight-through estimator, and the codebook kept at unit norm after every step, so the class's
own `encode` (Euclidean argmin) and `decode` (normalised codes) match training exactly.
The loss adds to pixel MSE a palette term: cross-entropy of each reconstructed pixel's nearest
palette colour, weighted toward object pixels, which is what the shapes detector reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from unirl_kit.checkpoint import load_latest, save_checkpoint
from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.pretrain.scenes import scene_batch
from unirl_kit.schedules import warmup_cosine
from unirl_kit.types import InputError
from unirl_kit.worlds.shapes.vocab import BACKGROUND, COLORS, PALETTE


@dataclass
class TokenizerConfig:
    image_size: int = 64
    channel_multiplier: list[int] = field(default_factory=lambda: [1, 1, 2])  # 4x downsampling
    base_channels: int = 32  # GroupNorm(32) needs multiples of 32
    latent_channels: int = 64
    embed_dim: int = 8
    codebook_size: int = 512
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    palette_weight: float = 0.1
    object_weight: float = 4.0  # object pixels count this much more than background in the palette term
    commit_beta: float = 0.25
    restart_every: int = 100  # codes unused for this many steps restart at random encoder outputs
    bf16: bool = True
    checkpoint_every: int = 250
    log_every: int = 25


def resume(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, dict]:
    """Load the stage's latest checkpoint (weights and optimizer) if any: (step to start at, saved state)."""
    state = load_latest(Path(out) / "checkpoints", model)
    if state is None:
        return 0, {}
    opt.load_state_dict(state["optimizer"])
    return state["step"], state


def open_log(path: Path, resume_step: int):
    """The metrics log, cut back to the checkpoint being resumed (later rows would repeat)."""
    if path.exists():
        kept = []
        for _, ln in iter_lines(path):
            try:
                if parse_json(ln, str(path))["step"] <= resume_step:
                    kept.append(ln)
            except (InputError, KeyError, TypeError):
                break  # a torn last line
        path.write_text("".join(k + "\n" for k in kept))
    return path.open("a")


def build_vq(cfg: TokenizerConfig):
    from transformers import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    down = 2 ** (len(cfg.channel_multiplier) - 1)
    vq_cfg = JanusVQVAEConfig(
        base_channels=cfg.base_channels, channel_multiplier=list(cfg.channel_multiplier), num_res_blocks=1,
        latent_channels=cfg.latent_channels, embed_dim=cfg.embed_dim, num_embeddings=cfg.codebook_size,
        num_patches=cfg.image_size // down, dropout=0.0,
    )
    return JanusVQVAE(vq_cfg)


def quantize(vq, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine VQ with straight-through: (codes for the decoder, vq loss, indices, flat encodings)."""
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    codebook = F.normalize(vq.quantize.embedding.weight, dim=1)
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    idx = (flat.float() @ codebook.float().T).argmax(1)
    q = codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
    return z + (q - z).detach(), q, z, idx


def palette_refs() -> torch.Tensor:
    return torch.tensor([PALETTE[c] for c in COLORS] + [BACKGROUND], dtype=torch.float32) / 127.5 - 1.0


def tokenizer_loss(rec: torch.Tensor, target: torch.Tensor, cfg: TokenizerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel MSE, object-weighted palette cross-entropy)."""
    refs = palette_refs()
    tgt = ((target.permute(0, 2, 3, 1)[..., None, :] - refs) ** 2).sum(-1).argmin(-1)
    logits = -((rec.permute(0, 2, 3, 1)[..., None, :] - refs) ** 2).sum(-1) / 0.02
    weights = torch.where(tgt < len(COLORS), cfg.object_weight, 1.0)
    ce = F.cross_entropy(logits.reshape(-1, refs.shape[0]), tgt.reshape(-1), reduction="none")
    return F.mse_loss(rec, target), (ce * weights.reshape(-1)).sum() / weights.sum()


def _lr(step: int, cfg: TokenizerConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr)


def train_tokenizer(cfg: TokenizerConfig, out: Path, seed: int = 0) -> torch.nn.Module:
    """Train (or resume) the tokenizer in `out`; returns the model in eval mode."""
    out = Path(out)
    torch.manual_seed(seed)
    vq = build_vq(cfg).train()
    opt = torch.optim.AdamW(vq.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    usage = torch.zeros(cfg.codebook_size)
    start, state = resume(out, vq, opt)
    if state:
        usage = state["usage"]
    out.mkdir(parents=True, exist_ok=True)
    log = open_log(out / "log.jsonl", start)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        pixels, _ = scene_batch(seed, step, cfg.batch_size, cfg.image_size)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            codes, q, z, idx = quantize(vq, pixels)
            rec = vq.decoder(vq.post_quant_conv(codes))
        mse, ce = tokenizer_loss(rec.float(), pixels, cfg)
        vq_loss = F.mse_loss(q.float(), z.detach().float()) + cfg.commit_beta * F.mse_loss(z.float(), q.detach().float())
        loss = mse + cfg.palette_weight * ce + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            usage += torch.bincount(idx, minlength=cfg.codebook_size).float()
            if (step + 1) % cfg.restart_every == 0:
                dead = (usage == 0).nonzero().flatten()
                if len(dead):  # seeded by step: a resumed run restarts the same codes the same way
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
                    flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                    vq.quantize.embedding.weight[dead] = flat[torch.randint(0, flat.shape[0], (len(dead),), generator=gen)]
                n_used, n_dead = int((usage > 0).sum()), len(dead)
                usage.zero_()
            vq.quantize.embedding.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=1))
        if (step + 1) % cfg.log_every == 0:
            row = {"step": step + 1, "loss": loss.item(), "mse": mse.item(), "palette_ce": ce.item(),
                   "vq": vq_loss.item(), "lr": _lr(step, cfg), "elapsed_s": round(time.perf_counter() - t0, 1)}
            if (step + 1) % cfg.restart_every == 0:
                row.update(codes_used=n_used, codes_restarted=n_dead)
            log.write(json.dumps(row) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out / "checkpoints", step + 1, vq, {"optimizer": opt.state_dict(), "usage": usage})
    log.close()
    return vq.eval()
