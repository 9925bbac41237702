"""The parts every training recipe (grpo.py, sft.py) shares, in the order a recipe calls them:

- `session`: `setup` on entry, `cleanup` on exit. `setup`: processes, checks, the prompt pool, the
  output folder's lock, the policy (and its frozen reference), rewards, optimizer, resume (refusing
  another recipe's or another run's checkpoints), run info, tracking and the progress line, all in
  one `TrainingRun`;
- `run_steps`: the step loop around the recipe's `train_step`, with `log_step` (a step's metrics row to
  the trackers and the progress line) and `save_checkpoint` (weights, optimizer and RNG state, every
  `run.checkpoint_every` steps and after the last);
- `finish`: the final export (`final/`) and `summary.json`;
- `cleanup`: trackers and progress closed, the model and optimizer let go.

A recipe's own file then holds only its algorithm: `train_step` and one function per step.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unirl_kit.backbones.base import resolve_cfg_scale
from unirl_kit.backbones.loading import no_transformers_bars
from unirl_kit.checkpoint import latest_checkpoint
from unirl_kit.config import check_same_run, to_dict, write_run_info
from unirl_kit.jsonl import read_json, sha256_file, write_atomic
from unirl_kit.locking import lock_output
from unirl_kit.progress import Progress
from unirl_kit.tracking import Tracker
from unirl_kit.training.common import Policy, build_optimizer, build_policy, check_out, init_processes
from unirl_kit.training.export import export_final
from unirl_kit.training.state import load_train_state, save_train_state
from unirl_kit.types import InputError


@dataclass
class TrainingRun:
    """Everything a recipe's steps use, made once by `setup`."""

    cfg: Any
    rank: int
    world: int
    policy: Policy
    optimizer: torch.optim.Optimizer
    reward: Any  # the composed rewards, or None when the recipe scores nothing
    pool: list  # the prompts, or what the recipe's `load_pool` returned (SFT distill: the kept images)
    out: Path
    start: int  # the first step to run (the resumed checkpoint's step, else 0)
    stamp: dict[str, str]
    tracker: Tracker | None = None
    started: float = field(default_factory=time.perf_counter)
    closing: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    progress_task: Any = None

    @property
    def steps(self) -> range:
        return range(self.start, self.cfg.run.steps)

    def checkpoint_due(self, step: int) -> bool:
        """After `step` (0-based): every `run.checkpoint_every` steps, and after the last."""
        done = step + 1
        return done % self.cfg.run.checkpoint_every == 0 or done == self.cfg.run.steps


def setup(cfg: Any, resume: bool, *, check: Callable[[Any, int], None], stamp: dict[str, str],
          wants_rewards: bool, keep_reference: bool, load_pool: Callable[[Any], list] | None = None) -> TrainingRun:
    """Everything before the first step. Cheap checks (config, prompts, reward names, the output folder,
    a resume's settings) come before the model loads, so a bad input fails in seconds.

    `stamp` (e.g. {"config": "train sft", "mode": "und"}) is saved in every checkpoint; a resume whose
    checkpoints carry another stamp, or whose settings differ from the run's config.yaml beyond what
    `RESUME_MAY_CHANGE` allows (unirl_kit/config.py), is refused. Call inside `@holds_output_locks`."""
    rank, world = init_processes()
    check(cfg, world)
    pool = _load_pool(cfg, load_pool)
    if wants_rewards:
        _check_reward_names(cfg.rewards)
    from unirl_kit.registry import registry

    registry("backbones").get(cfg.backbone.name)  # a misspelt backbone fails before run.out is made
    out = check_out(cfg.run, resume)
    lock_output(out)
    resuming = resume and latest_checkpoint(out / "checkpoints") is not None
    unresolved = ("sampling.cfg_scale",) if cfg.sampling.cfg_scale is None else ()
    if resuming:  # the same run or none, before the model loads
        check_same_run(out, cfg, stamp["config"], unresolved)
    digests = input_digests(cfg)  # read once: checked against a resumed run's, then saved
    check_same_inputs(out, digests, resuming)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.backbone, cfg.lora, keep_reference=keep_reference, world=world)
    cfg.sampling.cfg_scale = resolve_cfg_scale(policy.backbone, cfg.sampling.cfg_scale)  # saved resolved
    if resuming and unresolved:
        check_same_run(out, cfg, stamp["config"])
    reward = None
    if wants_rewards:
        from unirl_kit.rewards.base import build_rewards

        reward = build_rewards(cfg.rewards, cfg.reward_options, policy.backbone)
    optimizer = build_optimizer(policy.params, cfg.optim)
    start = _resume(out, cfg, policy, optimizer, stamp) if resume else 0
    if rank == 0:
        write_run_info(out, cfg, stamp["config"])
        write_atomic(out / INPUTS, json.dumps(digests, indent=2) + "\n")
    run = TrainingRun(cfg, rank, world, policy, optimizer, reward, pool, out, start, stamp)
    if rank == 0:
        run.tracker = run.closing.enter_context(Tracker(out, cfg.run.report_to, start, to_dict(cfg), str(out)))
    progress = run.closing.enter_context(Progress("train", cfg.run.progress and rank == 0, transient=False))
    run.progress_task = progress.task(stamp["config"], cfg.run.steps, "steps", completed=start)
    return run


INPUTS = "inputs.json"  # the digests of the files a run reads, beside its config.yaml


def input_digests(cfg: Any) -> dict[str, str]:
    """sha256 of the input files (the prompts; distill / dpo: the scores they keep images by): config.yaml
    names their paths, and a file rewritten in place keeps its path."""
    files = {"prompts": cfg.prompts, "samples/scores.jsonl": getattr(cfg, "samples", "") and
             str(Path(cfg.samples) / "scores.jsonl")}
    return {k: sha256_file(Path(v)) for k, v in files.items() if v and Path(v).is_file()}


def check_same_inputs(out: Path, digests: dict[str, str], resuming: bool) -> None:
    """A resume reads the same input files (`input_digests`) as the run it continues, byte for byte."""
    saved = out / INPUTS
    if not resuming or not saved.is_file():
        return
    old = read_json(saved)
    if not isinstance(old, dict):
        raise InputError(f"{saved}: expected a JSON object of file digests; restore it or use another run.out")
    changed = [k for k in old if digests.get(k) != old[k]]
    if changed:
        k = changed[0]
        raise InputError(f"{out}: its run read another {k} (sha256 {str(old[k])[:12]}..., now "
                         f"{str(digests.get(k))[:12]}...); resume with the file it was started with, or use "
                         "another run.out")


def _load_pool(cfg: Any, load_pool: Callable[[Any], list] | None) -> list:
    from unirl_kit.prompts.schema import read_prompts

    pool: list = load_pool(cfg) if load_pool else read_prompts(Path(cfg.prompts))
    if not pool:
        raise InputError(f"{cfg.prompts}: no prompts")
    return pool


def _check_reward_names(specs: list[str]) -> None:
    """Unknown reward names fail here, before the model loads."""
    from unirl_kit.registry import registry
    from unirl_kit.rewards.base import parse_reward_spec

    for spec in specs:
        registry("rewards").get(parse_reward_spec(spec)[0])


def _resume(out: Path, cfg: Any, policy: Policy, optimizer: torch.optim.Optimizer, stamp: dict[str, str]) -> int:
    """The step to start from: the latest checkpoint's (weights, optimizer and RNG restored), else 0."""
    state = load_train_state(out / "checkpoints", policy.model, optimizer)
    if state is None:
        return 0
    found = {k: state.get(k) for k in stamp}
    if found != stamp:
        raise InputError(f"{out}/checkpoints were written by {found}, not {stamp}; resume with the same settings "
                         "or use a new run.out")
    start = int(state["step"])
    if start > cfg.run.steps:  # config.yaml would claim a shorter run than the weights had
        raise InputError(f"run.steps={cfg.run.steps}: {out}/checkpoints already reached step {start}; a resume "
                         f"extends a run, so give run.steps >= {start}")
    return start


def run_steps(run: TrainingRun, train_step: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """The step loop: `train_step(step)` (the recipe's algorithm) for each step left, its metrics row
    logged, a checkpoint when due; returns the last row."""
    row: dict[str, Any] = {}
    for step in run.steps:
        row = train_step(step)
        log_step(run, step, row)
        if run.checkpoint_due(step):
            save_checkpoint(run, step + 1)
    return row


def log_step(run: TrainingRun, step: int, row: dict[str, Any]) -> None:
    """Rank 0's trackers every `run.log_every` steps; the progress line every step."""
    if run.tracker is not None and (step + 1) % run.cfg.run.log_every == 0:
        run.tracker.log_scalars(step + 1, row)
    run.progress_task.update(step + 1, step_info(row))


def step_info(metrics: dict[str, Any]) -> str:
    """What the progress line shows of a step besides the count, rate and ETA: its reward or losses."""
    keys = [k for k in ("reward/mean", "und_reward/mean", "loss/gen", "loss/und", "loss/sft") if k in metrics]
    return " ".join(f"{k.split('/')[0] if k.endswith('mean') else k}={metrics[k]:.3f}" for k in keys)


def save_checkpoint(run: TrainingRun, step: int) -> None:
    """checkpoints/step-N: rank 0 writes; under FSDP every rank first takes part in gathering the
    weights and optimizer state. All ranks leave together, so none runs ahead of a torn checkpoint."""
    policy, optimizer, root = run.policy, run.optimizer, run.out / "checkpoints"
    keep, optim = run.cfg.run.keep_checkpoints, None
    weights = policy.trained_weights()  # under FSDP a collective: every rank calls
    if policy.fsdp:
        from unirl_kit.training.fsdp import full_optimizer_state

        optim = full_optimizer_state(policy.model, optimizer, keep=run.rank == 0)
    if run.rank == 0:
        save_train_state(root, step, weights, optimizer, run.stamp, keep, optimizer_state=optim)
    _barrier(run.world)


def finish(run: TrainingRun, last: dict[str, Any]) -> dict[str, Any]:
    """The final export and summary.json (rank 0); returns the summary."""
    with no_transformers_bars():  # its shard-writing bar would be tqdm lines in a log file
        final = export_final(run.policy, run.out, run.cfg, run.stamp, run.rank, last)
    summary = {"steps": run.cfg.run.steps, **{k: v for k, v in run.stamp.items() if k != "config"},
               "started_at": run.start, "seconds": round(time.perf_counter() - run.started, 1),
               "final": str(final) if final else None, "last": last}
    if run.rank == 0:
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _barrier(run.world)  # no rank returns (and loads final/, as a next stage may) before rank 0 wrote it
    return summary


@contextlib.contextmanager
def session(cfg: Any, resume: bool, **how: Any) -> Iterator[TrainingRun]:
    """`setup(cfg, resume, **how)` on entry, `cleanup` on exit, also when a step raises."""
    run = setup(cfg, resume, **how)
    try:
        yield run
    finally:
        cleanup(run)


def cleanup(run: TrainingRun) -> None:
    """Close trackers and progress, and free the model and optimizer (a recipe holds nothing else). The
    process group stays for whatever the process does next; the one `init_processes` started is ended
    when the process exits. A sharded model is collected now, not whenever: FSDP's modules sit in
    reference cycles and hold the group's device mesh, and a group destroyed under live sharded modules
    (by a caller's own `destroy_process_group`) aborted the process at exit in about 1 run in 3
    (measured with gloo on the CPU, torch 2.14)."""
    sharded = run.policy is not None and run.policy.fsdp
    run.closing.close()
    run.policy = run.optimizer = run.reward = None  # type: ignore[assignment]
    if sharded:
        gc.collect()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
