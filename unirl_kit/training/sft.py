"""`unirl train sft`: UniRL's supervised fine-tuning on the model's own images, as one recipe read top
to bottom like grpo.py (setup, the steps, checkpoint, cleanup: `recipe.py`). The steps:

1. `sample_prompts`  - the shared rollout's (rollout.py): this step's prompts, by (seed, step);
2. `generate_groups` - the shared rollout's: `group_size` images per prompt with the current policy;
3. `select_targets`  - what to learn from them: und / e2e every image with its prompt's question and
                       ground-truth answer; gen-rs the images whose reward reaches `threshold` and/or
                       the `keep_top` best of each group (self-RAFT: best-of-N by the judge, distilled);
4. `sft_update`      - one optimizer step on the step's loss (none when gen-rs kept nothing).
distill (offline self-RAFT) replaces steps 1-3 by `distill_batch`: `prompts_per_step` of the images kept
from a judged samples folder (`training/distill_data.py`), in a fresh order every epoch. dpo does the
same with pairs (each prompt's best image by the judge, and its worst) and `dpo_loss` instead of the NLL.

Losses are token means over the global batch (all ranks' kept rows), so neither `optim.micro_batch`
nor the number of processes changes them:
- und: NLL of the answer tokens (+ EOS) given the generated image (the PIL image, uint8) and the
  question. No gradient reaches generation: the image is data.
- e2e: the same NLL on an image decoded from y = onehot(sampled) + soft - soft.detach() with
  soft = softmax((logits + g) / gumbel_tau) (straight-through Gumbel-softmax). `logits` are the
  teacher-forced *conditional* generation logits of the sampled tokens: no CFG in the training
  forward (CFG is how sampling sharpened them; its unconditional rows would double the forward and
  make the relaxation depend on cfg_scale). g is Gumbel noise seeded by (run.seed, step, image).
  Forward values are the sampled image's (pixels clamped as for the PIL image, not rounded to
  uint8); the backward reaches the generation head and the language model through soft.
  With gen_weight > 0 the conditional NLL of the sampled tokens is added (off by default).
- gen-rs: rejection sampling: NLL of the kept images' tokens given the prompt under the distribution
  they were sampled from (`logprob: guided`, the CFG mix at the sampling temperature: measured on
  tiny-shapes, training the conditional branch alone on guided samples and then sampling with guidance
  again compounds the guidance and the judge's reward fell 5x in 100 steps), or the conditional
  branch alone (`logprob: conditional`, cfg 1, temperature 1, as pre-training trains it). With
  `focus` > 0 each token's NLL is weighted by (1 - p)^focus (p its probability, detached; focal loss):
  most image tokens are background the model already predicts, and the plain mean spends the update
  on memorising them rather than on the few uncertain tokens where an image goes right or wrong.
- dpo: Diffusion-DPO / DPO on image pairs: -log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) -
  log ref(l)))) with log-probs summed over the image tokens (as `logprob` says), ref the frozen starting
  weights, mean over pairs. Why beside the NLL: measured on tiny-shapes, distilling even the detector's
  correct images barely moved GenEval (benchmarks/README.md, issue 20); a pair's tokens that chosen and
  rejected share cancel, so the update falls on what tells them apart.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from unirl_kit.backbones.base import GenerationBatch, image_seed
from unirl_kit.locking import holds_output_locks
from unirl_kit.prompts.qa import question_and_truth
from unirl_kit.training import recipe
from unirl_kit.training.common import (
    Policy,
    answer_token_count,
    finish_row,
    gather_floats,
    learning_rate,
    optimizer_step,
    reward_columns,
)
from unirl_kit.training.config import SFTConfig, check_sft
from unirl_kit.training.rollout import generate_groups, judge, sample_prompts, samples_of
from unirl_kit.training.sft_math import dpo_loss, focused, gumbel_noise, keep_rows, relaxed_tokens
from unirl_kit.types import PromptSpec, TrainingError


@holds_output_locks
def run_sft(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    """Train `run.steps` steps (continuing from the last checkpoint with resume); returns a summary. A
    resume refuses checkpoints written by another recipe or another SFT mode."""
    with recipe.session(cfg, resume, check=check_sft, stamp={"config": "train sft", "mode": cfg.mode},
                        wants_rewards=cfg.mode == "gen-rs",  # distill's images were judged by `unirl score`
                        keep_reference=cfg.mode == "dpo", load_pool=OFFLINE_DATA.get(cfg.mode)) as run:
        last = recipe.run_steps(run, lambda step: train_step(run.policy, run.optimizer, run.reward, run.pool, step,
                                                             cfg, run.rank, run.world))
        return recipe.finish(run, last)


def _kept_images(cfg: SFTConfig) -> list:
    """Offline self-RAFT's data: the judge's best images of the samples folder."""
    from unirl_kit.training.distill_data import check_judge, load_kept

    check_judge(Path(cfg.samples), cfg.rewards, cfg.reward_options)
    return load_kept(Path(cfg.samples), cfg.keep_top, cfg.threshold)


def _pairs(cfg: SFTConfig) -> list:
    """DPO's data: each prompt's best and worst image by the judge."""
    from unirl_kit.training.distill_data import check_judge, load_pairs

    check_judge(Path(cfg.samples), cfg.rewards, cfg.reward_options)
    return load_pairs(Path(cfg.samples))


OFFLINE_DATA = {"distill": _kept_images, "dpo": _pairs}  # the modes that train on a judged samples folder


def train_step(policy: Policy, optimizer, reward, pool: list, step: int, cfg: SFTConfig,
               rank: int, world: int) -> dict[str, Any]:
    """Steps 1-4 for one training step (distill, dpo: their batch, then step 4); returns its metrics row."""
    times = {}
    t0 = time.perf_counter()
    if cfg.mode in OFFLINE_DATA:  # the pool is their kept images (pairs)
        data = distill_batch(pool, step, cfg, rank, world)
        times["select"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        update = sft_update(policy, optimizer, data, step, cfg, world)
        times["update"] = time.perf_counter() - t0
        return step_metrics(step, data, update, times, [], cfg, world)
    specs, offset = sample_prompts(pool, step, cfg, rank, world)
    batch = generate_groups(policy, specs, offset, step, cfg)
    times["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = select_targets(policy, reward, specs, offset, batch, cfg)
    times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    update = sft_update(policy, optimizer, data, step, cfg, world)
    times["update"] = time.perf_counter() - t0
    return step_metrics(step, data, update, times, getattr(reward, "names", []), cfg, world)


@dataclasses.dataclass
class SFTBatch:
    """One rank's share of a step: prompts, images, the rows trained on, and their targets."""

    specs: list[PromptSpec]
    offset: int  # global index of this rank's first prompt
    batch: GenerationBatch
    group_size: int
    keep: list[int]  # rows trained on
    questions: list[str] = dataclasses.field(default_factory=list)  # per row (und / e2e)
    answers: list[str] = dataclasses.field(default_factory=list)
    rewards: torch.Tensor | None = None  # [N] (gen-rs)
    ref_logp: torch.Tensor | None = None  # [N] the reference's image log-probs (dpo)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def prompt(self, row: int) -> str:
        return self.specs[row // self.group_size].prompt


def select_targets(policy: Policy, reward, specs: list[PromptSpec], offset: int, batch: GenerationBatch,
                   cfg: SFTConfig) -> SFTBatch:
    """und / e2e: every row, with the spec's question and answer (UniRL's templates where the prompt
    file has none); gen-rs: the rows whose weighted reward >= threshold."""
    k = cfg.group_size
    data = SFTBatch(specs, offset, batch, k, list(range(len(batch))))
    if cfg.mode in ("und", "e2e"):
        qa = [question_and_truth(specs[i // k]) for i in range(len(batch))]
        data.questions, data.answers = [q for q, _ in qa], [a for _, a in qa]
        return data
    out = judge(policy, reward, samples_of(specs, offset, batch, k))
    totals, data.records = out.scores, out.details
    data.rewards = torch.tensor(totals, dtype=torch.float32)
    data.keep = keep_rows(totals, k, cfg.threshold, cfg.keep_top)
    return data


def _noise_seed(data: SFTBatch, row: int, step: int, cfg: SFTConfig) -> int:
    base = image_seed(cfg.run.seed, step, 1 << 22)
    return image_seed(base, data.offset + row // data.group_size, row % data.group_size)


def micro_terms(policy: Policy, data: SFTBatch, rows: list[int], step: int, cfg: SFTConfig
                ) -> dict[str, torch.Tensor]:
    """Summed NLLs of `rows` (differentiable): {'und': answer tokens, 'gen': image tokens}, per mode."""
    b = policy.backbone
    if cfg.mode == "und":
        scores = b.answer_logprobs([data.batch.images[i] for i in rows], [data.questions[i] for i in rows],
                                   [data.answers[i] for i in rows])
        return {"und": -(scores.logprobs * scores.mask).sum()}
    if cfg.mode == "dpo":
        return dpo_terms(policy, data, rows, cfg)
    if cfg.mode in ("gen-rs", "distill"):
        return {"gen": -focused(image_logp(policy, data, rows, cfg, per_token=True), cfg.focus).sum()}
    prompts = [data.prompt(i) for i in rows]
    tokens = data.batch.tokens[rows].to(b.device)
    logits = b.generation_logits(prompts, tokens).float()
    noise = torch.stack([gumbel_noise(tuple(logits.shape[1:]), _noise_seed(data, i, step, cfg)) for i in rows])
    pixels = b.decode_soft(relaxed_tokens(logits, tokens, noise.to(logits.device), cfg.gumbel_tau))
    scores = b.answer_logprobs_from_pixels(pixels, [data.questions[i] for i in rows], [data.answers[i] for i in rows])
    out = {"und": -(scores.logprobs * scores.mask).sum()}
    if cfg.gen_weight > 0:
        out["gen"] = -logits.log_softmax(-1).gather(-1, tokens[..., None]).sum()
    return out


def image_logp(policy: Policy, data: SFTBatch, rows: list[int], cfg: SFTConfig, per_token: bool = False
               ) -> torch.Tensor:
    """[len(rows)] log-probs of the rows' image tokens, summed (or [len(rows), tokens] with `per_token`),
    under the distribution `logprob` names (gen-rs, distill and dpo)."""
    b = policy.backbone
    scale = cfg.sampling.cfg_scale if cfg.logprob == "guided" else 1.0
    trajectory = None if data.batch.trajectory is None else data.batch.trajectory[rows]
    logp = b.image_logprobs([data.prompt(i) for i in rows], data.batch.tokens[rows].to(b.device), cfg_scale=scale,
                            temperature=cfg.sampling.temperature, trajectory=trajectory)
    return logp if per_token else logp.sum(-1)


def reference_logp(policy: Policy, data: SFTBatch, chunks: list[list[int]], cfg: SFTConfig) -> torch.Tensor:
    """Every row's `image_logp` under the frozen starting weights (no grad), one forward per micro-batch
    (as many on every rank: FSDP)."""
    ref = torch.zeros(len(data.batch))
    for rows in chunks:
        with policy.as_reference(), policy.autocast():
            values = policy.call(image_logp, policy, data, rows or [0, 1], cfg).detach().float().cpu()
        if rows:
            ref[rows] = values
    return ref


def dpo_terms(policy: Policy, data: SFTBatch, rows: list[int], cfg: SFTConfig) -> dict[str, torch.Tensor]:
    """The DPO loss of consecutive (chosen, rejected) rows; also the pairs the policy already ranks right."""
    logp = image_logp(policy, data, rows, cfg)
    loss, margin = dpo_loss(logp, data.ref_logp[rows].to(logp.device), cfg.dpo_beta)
    return {"dpo": loss, "dpo/accuracy": (margin > 0).float().sum(), "dpo/margin": margin.sum()}


def loss_weights(cfg: SFTConfig) -> dict[str, float]:
    if cfg.mode == "dpo":
        return {"dpo": 1.0}
    if cfg.mode == "e2e":
        return {t: w for t, w in (("und", cfg.und_weight), ("gen", cfg.gen_weight)) if w > 0}
    return {"und": 1.0} if cfg.mode == "und" else {"gen": 1.0}  # gen-rs, distill


def token_counts(policy: Policy, data: SFTBatch, terms: list[str], world: int) -> dict[str, float]:
    """Global number of target tokens per term (the loss denominators), known before any backward."""
    local = {"und": answer_token_count(policy.backbone, [data.answers[i] for i in data.keep]) if "und" in terms else 0,
             "gen": len(data.keep) * data.batch.tokens.shape[1], "dpo": len(data.keep) // 2}
    return {t: float(gather_floats(torch.tensor([float(local[t])]), world).sum()) for t in terms}


def sft_update(policy: Policy, optimizer, data: SFTBatch, step: int, cfg: SFTConfig, world: int) -> dict[str, float]:
    """One optimizer step on sum_t weight_t * NLL_t / tokens_t over the kept rows; no step when no
    rank kept a row (gen-rs), so the weights and optimizer state stay as they were."""
    lr = learning_rate(step, cfg.run.steps, cfg.optim)
    kept = float(gather_floats(torch.tensor([float(len(data.keep))]), world).sum())
    out: dict[str, float] = {"lr": lr}
    if kept == 0:
        return out
    weights = loss_weights(cfg)
    counts = token_counts(policy, data, list(weights), world)
    logged = ("dpo/accuracy", "dpo/margin") if cfg.mode == "dpo" else ()  # per-pair means beside the loss
    local = dict.fromkeys([*weights, *logged], 0.0)
    size = max(2, cfg.optim.micro_batch // 2 * 2) if cfg.mode == "dpo" else cfg.optim.micro_batch  # whole pairs
    chunks = [data.keep[i: i + size] for i in range(0, len(data.keep), size)]
    if world > 1:  # every rank runs as many forwards/backwards (DDP, FSDP); gen-rs keeps unequal numbers of rows
        most = int(gather_floats(torch.tensor([float(len(chunks))]), world).max())
        chunks += [[] for _ in range(most - len(chunks))]
    if cfg.mode == "dpo":
        data.ref_logp = reference_logp(policy, data, chunks, cfg)
    for m, rows in enumerate(chunks):
        with policy.accumulating(last=m == len(chunks) - 1), policy.autocast():  # sync: last only; padding: row 0, zero loss
            terms = policy.call(micro_terms, policy, data, rows or [0, 1][:1 + (cfg.mode == "dpo")], step, cfg)
        # gradients are averaged over ranks, so each rank's share of the global mean is scaled by world
        loss = sum(weights[t] * terms[t].float() / max(counts[t], 1.0) for t in weights) * world
        if not rows:
            loss = loss * 0.0
        elif not torch.isfinite(loss):
            raise TrainingError(f"step {step + 1}: loss is {float(loss)} (micro-batch {m}); training stopped; the "
                                f"last good checkpoint is under {cfg.run.out}/checkpoints")
        loss.backward()
        for t in local:
            local[t] += float(terms[t].detach()) / max(counts[t.split("/")[0]], 1.0) if rows else 0.0
    out["grad_norm"] = optimizer_step(policy, optimizer, lr, cfg.optim, world)
    parts = gather_floats(torch.tensor(list(local.values())), world).view(world, -1).sum(0)
    for t, value in zip(local, parts.tolist(), strict=True):
        out[f"loss/{t}" if t in weights else t] = value
    out["loss/sft"] = sum(weights[t] * out[f"loss/{t}"] for t in weights)
    return out


def step_metrics(step: int, data: SFTBatch, update: dict[str, float], times: dict[str, float], names: list[str],
                 cfg: SFTConfig, world: int) -> dict[str, Any]:
    """One metrics.jsonl row: losses, kept images (count and share), rewards (gen-rs), grad norm, lr, times."""
    row: dict[str, Any] = {"step": step + 1}
    counts = gather_floats(torch.tensor([float(len(data.keep)), float(len(data.batch))]), world).view(world, 2).sum(0)
    row["kept"] = int(counts[0])
    row["kept_share"] = round(float(counts[0] / counts[1]), 6) if counts[1] > 0 else 0.0
    if data.rewards is not None:
        row.update(reward_columns(gather_floats(data.rewards, world), data.records, names))
    return finish_row(row, update, times, len(data.batch))


def distill_batch(kept, step: int, cfg: SFTConfig, rank: int, world: int) -> SFTBatch:
    """This rank's rows of a distill (dpo) step, as an SFTBatch of one row per kept image (per pair's image;
    no pixels needed)."""
    from unirl_kit.training.distill_data import distill_rows

    rows, offset = distill_rows(kept, step, cfg.prompts_per_step, cfg.run.seed, rank, world,
                                unit=2 if cfg.mode == "dpo" else 1)
    tokens = torch.stack([r.tokens for r in rows])
    batch = GenerationBatch(images=[None] * len(rows), tokens=tokens, logprobs=torch.zeros(tokens.shape),
                            seeds=[0] * len(rows))
    data = SFTBatch([r.spec for r in rows], offset, batch, 1, list(range(len(rows))))
    data.rewards = torch.tensor([r.reward for r in rows], dtype=torch.float32)
    return data
