"""Stage 3 of tiny-shapes: train the Janus language model in both directions on shapes scenes.

Generation: prompt -> the frozen tokenizer's image tokens, teacher-forced through Janus's own
generation path (`prepare_embeddings_for_image_generation` in, `generation_head` out), with prompt
dropout so classifier-free guidance works (the unconditional prompt is built as `generate()` builds
it: every token but BOS and BOI replaced by PAD). Understanding: image + question -> answer (+ EOS)
through Janus's understanding path (vision tower features in place of the image placeholders, the
text head out); questions are the six UniRL types, or a caption request answered by the prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unirl_kit.backbones.tiny_shapes import build
from unirl_kit.checkpoint import save_checkpoint
from unirl_kit.pretrain.canonical import build_canonical_codes, canonical_tokens
from unirl_kit.pretrain.gate import tokenizer_gate
from unirl_kit.pretrain.scenes import scene_batch
from unirl_kit.pretrain.tokenizer import open_log, resume
from unirl_kit.prompts.edits import minimal_edits
from unirl_kit.schedules import warmup_cosine
from unirl_kit.types import InputError, PromptSpec


@dataclass
class LanguageModelConfig:
    steps: int = 5000
    gen_batch: int = 16
    und_batch: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    cfg_dropout: float = 0.1  # share of generation prompts trained unconditionally
    caption_share: float = 0.2  # share of understanding examples asking for a caption
    canonical_margin: int = -1  # -1: the encoder's own tokens as targets (v1-v3); >= 0: local ones (v4: 2)
    canonical_batches: int = 80  # x 32 scenes that the local-code table is built from
    gen_align: int = 1  # generation scenes' objects on this pixel grid (4 = the tokenizer's; v4); 1 = anywhere
    prompt_reading: float = 0.0  # weight of `prompt_reading_loss` (0: off, as v1-v4)
    caption_noise: float = 0.0  # share of generation captions that misstate one fact (`noisy_caption`; v6)
    caption_noise_tags: list[str] = field(default_factory=lambda: ["two_object", "counting", "colors",
                                                                   "position", "color_attr"])
    init_from: str | None = None  # an exported tiny-shapes folder to continue from (its VQ is not used)
    text_hidden: int = 256
    text_layers: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    pretrained_vision: bool = True  # start the tower from the vision stage (recipes before it: False)
    freeze_vision: bool = True  # keep that tower fixed, as Janus keeps SigLIP in pre-training
    grad_clip: float = 1.0
    bf16: bool = True
    device: str = "cpu"  # the recipe's reference is the CPU; "cuda" trains the same recipe on a GPU
    checkpoint_every: int = 250
    log_every: int = 25


def _lr(step: int, cfg: LanguageModelConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, floor=0.05)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def generation_forward(model, tokenizer, prompts: list[str], image_tokens: torch.Tensor,
                       uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced image tokens given the (possibly dropped) prompt: each token's negative
    log-likelihood [B, T] and the last hidden state at the positions that predict them [B, T, H]."""
    vocab = tokenizer.get_vocab()
    bos, boi, pad = vocab[build.BOS], vocab[build.BOI], vocab[build.PAD]
    rows = []
    for prompt, drop in zip(prompts, uncond.tolist(), strict=True):
        ids = tokenizer(prompt).input_ids + [boi]
        rows.append([t if (t in (bos, boi) or not drop) else pad for t in ids])
    ids, mask = (t.to(model.device) for t in _left_pad(rows, pad))
    text = model.get_input_embeddings()(ids)
    image = model.prepare_embeddings_for_image_generation(image_tokens[:, :-1])
    embeds = torch.cat([text, image], 1)
    attn = torch.cat([mask, torch.ones(image.shape[:2], dtype=torch.long, device=mask.device)], 1)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attn, position_ids=positions).last_hidden_state
    hidden = hidden[:, ids.shape[1] - 1:]
    logits = model.model.generation_head(hidden)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), image_tokens.reshape(-1), reduction="none")
    return nll.view(image_tokens.shape), hidden


def generation_loss(model, tokenizer, prompts: list[str], image_tokens: torch.Tensor,
                    uncond: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of the image tokens given the (possibly dropped) prompt, or with
    `per_image` each image's summed negative log-likelihood (what `benchmarks/prompt_binding.py` reads)."""
    nll, _ = generation_forward(model, tokenizer, prompts, image_tokens, uncond)
    return nll.sum(1) if per_image else nll.mean()


def noisy_caption(spec: PromptSpec, rng: np.random.Generator) -> str:
    """The prompt with its tag's key fact misstated: another relation, colour or count where the tag
    is about one (edits that keep the prompt's shapes), another shape otherwise.

    Why: web captions of real pre-training data often misstate relations, colours and counts, so a
    real generator puts part of its mass on images its caption does not describe, and post-training
    moves that mass back. Exact captions (v1-v5) leave no such mode error to fix, only capacity:
    session 9 found that even the model's own correct images (oracle RAFT) do not lift v5."""
    edits = minimal_edits(spec)
    classes = sorted(r.cls for r in spec.include)
    same = [e for e in edits if sorted(r.cls for r in e.include) == classes]
    pool = same or edits
    return pool[int(rng.integers(len(pool)))].prompt


def generation_captions(specs: list[PromptSpec], cfg: LanguageModelConfig, seed: int, step: int) -> list[str]:
    """The captions the generation half trains on at `step`: each prompt, or with probability
    `caption_noise` (in `caption_noise_tags`) its `noisy_caption`, from its own generator."""
    if not cfg.caption_noise:
        return [s.prompt for s in specs]
    rng = np.random.default_rng([seed, 3, step])
    flips = rng.random(len(specs)) < cfg.caption_noise
    return [noisy_caption(s, rng) if f and s.tag in cfg.caption_noise_tags else s.prompt
            for s, f in zip(specs, flips, strict=True)]


PROMPT_STOPWORDS = ("a", "an", "photo", "of", "the", "and")


def prompt_reading_loss(model, tokenizer, prompts: list[str], hidden: torch.Tensor,
                        uncond: torch.Tensor) -> torch.Tensor:
    """KL from the prompt's content words (uniform over them) to the text head's reading of every
    image position. Why: in raster order the prompt decides only the first token of each object, so
    the generation loss alone teaches the prompt to one token per object and a tiny model learns to
    ignore it (tiny-shapes v4); this asks every image position to carry the prompt, a dense gradient
    through the same attention the first object token needs. Dropped (unconditional) rows are skipped."""
    vocab = tokenizer.get_vocab()
    stop = {vocab[w] for w in PROMPT_STOPWORDS} | {vocab[build.BOS]}
    target = torch.zeros(len(prompts), model.lm_head.out_features, device=hidden.device)
    for i, (prompt, drop) in enumerate(zip(prompts, uncond.tolist(), strict=True)):
        words = [t for t in tokenizer(prompt).input_ids if t not in stop]
        if words and not drop:
            target[i].index_add_(0, torch.tensor(words, device=hidden.device), torch.ones(len(words), device=hidden.device))
    rows = target.sum(1) > 0
    if not rows.any():
        return hidden.sum() * 0.0
    q = target[rows] / target[rows].sum(1, keepdim=True)
    logp = F.log_softmax(model.lm_head(hidden[rows]).float(), -1)
    entropy = -(q * q.clamp(min=1e-12).log()).sum(-1)
    return (-(q[:, None] * logp).sum(-1) - entropy[:, None]).mean()


def understanding_loss(model, tokenizer, pixels: torch.Tensor, questions: list[str], answers: list[str]) -> torch.Tensor:
    """Mean cross-entropy of answer tokens + EOS given image and question (right-padded)."""
    vocab = tokenizer.get_vocab()
    pad, eos, boi, eoi, img = (vocab[t] for t in (build.PAD, build.EOS, build.BOI, build.EOI, build.IMAGE))
    rows, labels = [], []
    for q, a in zip(questions, answers, strict=True):
        prompt = [vocab[build.BOS], boi] + [img] * build.NUM_UND_FEATURES + [eoi] + tokenizer(q).input_ids[1:]
        answer = tokenizer(a).input_ids[1:] + [eos]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    ids, lab, mask = ids.to(model.device), lab.to(model.device), mask.to(model.device)
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)


def build_model(cfg: LanguageModelConfig, vq_dir: Path, vision_dir: Path | None = None):
    """A fresh tiny Janus whose VQ is the trained (frozen) tokenizer and, given `vision_dir`, whose
    understanding tower is the vision stage's."""
    from transformers import JanusForConditionalGeneration
    from transformers.models.janus.modeling_janus import JanusVisionModel, JanusVQVAE

    vq = JanusVQVAE.from_pretrained(vq_dir)
    config = build.build_config(vq.config.to_dict(), cfg.text_hidden, cfg.text_layers, cfg.vision_hidden,
                                cfg.vision_layers)
    model = JanusForConditionalGeneration(config)
    model.model.vqmodel.load_state_dict(vq.state_dict())
    model.model.vqmodel.requires_grad_(False)
    if vision_dir is not None:
        model.model.vision_model.load_state_dict(JanusVisionModel.from_pretrained(vision_dir).state_dict())
    if cfg.init_from:
        _load_export(model, Path(cfg.init_from))
    if vision_dir is not None or cfg.init_from:
        model.model.vision_model.requires_grad_(not cfg.freeze_vision)
    return model


def _load_export(model, folder: Path) -> None:
    """Every weight but the VQ's from an exported model (bf16 -> the model's fp32): continued
    pre-training keeps the tokenizer stage's full-precision VQ, whose codes the targets are."""
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    if not path.is_file():
        raise InputError(f"lm.init_from: {path} not found; expected an exported tiny-shapes folder")
    state = {k: v for k, v in load_file(path).items() if not k.startswith("model.vqmodel.")}
    own = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("model.vqmodel.")}
    bad = sorted(set(own) ^ set(state)) + sorted(k for k in state if k in own and state[k].shape != own[k])
    if bad:
        raise InputError(f"lm.init_from: {path} does not match lm's sizes (first differing weight {bad[0]}); "
                         "set text_hidden/text_layers/vision_hidden/vision_layers to the export's")
    model.load_state_dict(state, strict=False)


def _canonical_table(vq_dir: Path, cfg: LanguageModelConfig, out: Path, seed: int) -> dict[bytes, int]:
    """The local-code table (rebuilt on resume: it is deterministic) and, once, its gate in canonical.json.
    The tokenizer is loaded on its own (on the CPU, with its own 16x16 grid: inside the Janus model
    its grid follows the vision tower's)."""
    from transformers.models.janus.modeling_janus import JanusVQVAE

    vq = JanusVQVAE.from_pretrained(vq_dir).eval()
    table = build_canonical_codes(vq, seed, cfg.gen_align, cfg.canonical_margin, cfg.canonical_batches)
    report = out / "canonical.json"
    if not report.exists():
        gate = tokenizer_gate(vq, build.IMAGE_SIZE, per_tag=50, align=cfg.gen_align,
                              retokenize=lambda px, tok: canonical_tokens(table, px, tok, cfg.canonical_margin)[0])
        report.write_text(json.dumps({"windows": len(table), "margin": cfg.canonical_margin,
                                      "align": cfg.gen_align, "gate": gate}, indent=2) + "\n")
    return table


def train_language_model(cfg: LanguageModelConfig, vq_dir: Path, out: Path, seed: int = 0,
                         vision_dir: Path | None = None):
    """Train (or resume) in `out`; returns the model in eval mode."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    model = build_model(cfg, vq_dir, vision_dir).to(device).train()
    model.model.vqmodel.eval()
    tokenizer = build.build_tokenizer()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start, _ = resume(out, model, opt)
    table = _canonical_table(vq_dir, cfg, out, seed) if cfg.canonical_margin >= 0 else None
    log = open_log(out / "log.jsonl", start)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([seed, 1, step])
        gen_pixels, gen_specs = scene_batch(seed + 1_000, step, cfg.gen_batch, build.IMAGE_SIZE, cfg.gen_align)
        und_pixels, und_specs = scene_batch(seed + 2_000, step, cfg.und_batch, build.IMAGE_SIZE)
        gen_pixels, und_pixels = gen_pixels.to(device), und_pixels.to(device)
        with torch.no_grad():
            image_tokens = model.model.vqmodel.encode(gen_pixels).image_tokens.view(cfg.gen_batch, -1)
        if table is not None:
            image_tokens, _ = canonical_tokens(table, gen_pixels.cpu(), image_tokens.cpu(), cfg.canonical_margin)
            image_tokens = image_tokens.to(device)
        uncond = torch.from_numpy(rng.random(cfg.gen_batch) < cfg.cfg_dropout)  # .tolist() only: stays on CPU
        captions = rng.random(cfg.und_batch) < cfg.caption_share
        questions = [build.CAPTION_QUESTION if c else s.question for s, c in zip(und_specs, captions, strict=True)]
        answers = [s.prompt if c else s.answer for s, c in zip(und_specs, captions, strict=True)]
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            prompts = generation_captions(gen_specs, cfg, seed, step)
            nll, hidden = generation_forward(model, tokenizer, prompts, image_tokens, uncond)
            gen = nll.mean()
            read = prompt_reading_loss(model, tokenizer, prompts, hidden, uncond) if cfg.prompt_reading else None
            und = understanding_loss(model, tokenizer, und_pixels, questions, answers)
        loss = gen + und + (cfg.prompt_reading * read if read is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            log.write(json.dumps({"step": step + 1, "gen_loss": gen.item(), "und_loss": und.item(),
                                  **({"read_loss": read.item()} if read is not None else {}),
                                  "grad_norm": float(grad_norm), "lr": _lr(step, cfg),
                                  "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out / "checkpoints", step + 1, model, {"optimizer": opt.state_dict()})
    log.close()
    return model.eval(), tokenizer
