"""`unirl loop`: K rounds of generate -> score -> train -> evaluate, one folder per round, then a report.

Round 0 evaluates the starting model (the baseline); round r >= 1 trains from round r-1's model and
evaluates the result. Every stage leaves `STAGE.done.json` in its round's folder when it finishes, so a
killed loop resumes at the first unfinished stage (and each stage resumes inside itself). Each round's
eval numbers and a grid of its eval images go to the `report_to` trackers at step = round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from unirl_kit.backbones.config import BackboneConfig
from unirl_kit.config import check_same_run, load_config, to_dict, write_run_info
from unirl_kit.jsonl import read_json, write_atomic
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.loop.config import LoopConfig, check_loop
from unirl_kit.progress import Progress
from unirl_kit.tracking import Tracker
from unirl_kit.types import InputError

log = logging.getLogger("unirl_kit.loop")


def _done(folder: Path, stage: str) -> dict | None:
    """What a finished stage recorded, or None when it has not finished."""
    path = folder / f"{stage}.done.json"
    if not path.exists():
        return None
    info = read_json(path)
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected the stage's JSON object; delete the file to run the stage again")
    return info


def _finish(folder: Path, stage: str, info: dict) -> dict:
    write_atomic(folder / f"{stage}.done.json", json.dumps(info, indent=2, default=str) + "\n")
    return info


def make_prompts(cfg: LoopConfig, out: Path) -> tuple[Path, Path]:
    """(train prompts, eval prompts): given files, or drawn here (train by `train_shares`, see LoopConfig)."""
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
    from unirl_kit.prompts.schema import read_prompts

    folder = out / "prompts"
    eval_file = Path(cfg.eval_prompts) if cfg.eval_prompts else folder / "eval.jsonl"
    train_file = Path(cfg.train_prompts) if cfg.train_prompts else folder / "train.jsonl"
    if not cfg.eval_prompts and not eval_file.exists():
        run_prompts(PromptsConfig(world=cfg.world, n=cfg.n_eval, seed=cfg.eval_seed, out=str(eval_file)))
    if not cfg.train_prompts and not train_file.exists():
        run_prompts(PromptsConfig(world=cfg.world, n=cfg.n_train, seed=cfg.train_seed, exclude=str(eval_file),
                                  shares=cfg.train_shares, out=str(train_file)))
    for path in (eval_file, train_file):  # read now: a bad file fails before a round's work, not after it
        if not read_prompts(path):
            raise InputError(f"{path}: no prompts")
    return train_file, eval_file


def model_of(cfg: LoopConfig, out: Path, round_index: int) -> str | None:
    """The weights round `round_index` starts from: the configured model, then each round's export."""
    if round_index == 0:
        return cfg.backbone.model
    return str(out / f"round-{round_index:03d}" / "train" / "final")


def evaluate(cfg: LoopConfig, folder: Path, eval_prompts: Path, model: str | None) -> dict[str, Any]:
    """generate (fixed seeds) -> eval geneval -> score (self-qa) -> eval understanding, each resumable."""
    from unirl_kit.backbones.config import build_backbone
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval
    from unirl_kit.eval.understanding.runner import UnderstandingConfig, run_understanding
    from unirl_kit.generation.run import GenerateConfig, run_generate
    from unirl_kit.scoring.run import ScoreConfig, run_score

    spec = eval_backbone(cfg, model)  # a trained export loads with the same backbone (`model` is its folder)
    backbone = build_backbone(spec)
    samples = folder / "samples"
    run_generate(GenerateConfig(backbone=spec, sampling=replace(cfg.sampling), prompts=str(eval_prompts),
                                out=str(samples), group_size=cfg.eval_group_size, seed=cfg.eval_seed,
                                batch_size=cfg.batch_size, progress=cfg.progress), backbone)
    geneval = run_geneval(GenevalConfig(images_dir=str(samples), out=str(folder / "geneval"),
                                        detector=cfg.detector, detector_options=dict(cfg.detector_options),
                                        progress=cfg.progress))
    scores = run_score(ScoreConfig(samples_dir=str(samples), out=str(folder / "scores.jsonl"), rewards=list(cfg.rewards),
                                   reward_options=cfg.reward_options, backbone=replace(spec),
                                   progress=cfg.progress), backbone)
    und = run_understanding(UnderstandingConfig(
        protocols=list(cfg.understanding), out=str(folder / "understanding"), images_dir=str(samples),
        geneval_results=str(folder / "geneval" / "results.jsonl"), per_tag=cfg.understanding_per_tag,
        backbone=replace(spec), seed=cfg.eval_seed, progress=cfg.progress), backbone)
    return {"geneval": geneval, "scores": scores, "understanding": und}


def eval_backbone(cfg: LoopConfig, model: str | None) -> BackboneConfig:
    """How the loop loads a round's model to draw and judge images: the loop's backbone at `model`, in the
    inference dtype (bfloat16 on a GPU), whatever dtype the trainers keep their weights in."""
    return BackboneConfig(name=cfg.backbone.name, model=model, options=dict(cfg.backbone.options),
                          device=cfg.backbone.device, dtype="auto")


def raft(cfg: LoopConfig, folder: Path, train_prompts: Path, model: str | None, common: dict[str, Any]) -> dict[str, Any]:
    """Offline self-RAFT, one round: draw `group_size` images per training prompt with the round's model,
    judge them with the SFT config's rewards, distill the best `keep_top` of each (SFT `mode: distill`).
    A reward with `judge: reference` judges with the loop's starting weights in every round."""
    from unirl_kit.backbones.config import build_backbone
    from unirl_kit.generation.run import GenerateConfig, run_generate
    from unirl_kit.scoring.run import ScoreConfig, run_score
    from unirl_kit.training.config import SFTConfig
    from unirl_kit.training.sft import run_sft

    samples, out = folder / "train_samples", folder / "train"
    sft = replace(load_config(SFTConfig, Path(cfg.sft_config) if cfg.sft_config else None,
                              {**common, "run.out": str(out)}, cfg.sft_overrides),
                  mode="distill", samples=str(samples))  # what raft is, whatever the SFT config says
    spec = eval_backbone(cfg, model)
    backbone = build_backbone(spec)
    run_generate(GenerateConfig(backbone=spec, sampling=replace(sft.sampling), prompts=str(train_prompts),
                                out=str(samples), group_size=sft.group_size, seed=sft.run.seed,
                                batch_size=cfg.batch_size, progress=cfg.progress), backbone)
    frozen = any(isinstance(o, dict) and o.get("judge") == "reference" for o in sft.reward_options.values())
    judge_spec = eval_backbone(cfg, cfg.backbone.model if frozen else model)
    judge = backbone if judge_spec == spec else build_backbone(judge_spec)
    scores = run_score(ScoreConfig(samples_dir=str(samples), rewards=list(sft.rewards), reward_options=sft.reward_options,
                                   backbone=judge_spec, progress=cfg.progress), judge)
    del backbone, judge  # free them before the trainer loads its own copy
    return {"judged": scores, "sft": run_sft(sft, resume=(out / "checkpoints").exists())}


def train(cfg: LoopConfig, folder: Path, train_prompts: Path, model: str | None, round_index: int) -> dict[str, Any]:
    """One round of training from `model`; GRPO, SFT, SFT then GRPO (`train: both`), or offline self-RAFT."""
    from unirl_kit.training.config import GRPOConfig, SFTConfig

    # typed values as the trainer config's options layer: above its file, below the user's *_overrides;
    # None (no model: the backbone's own default) leaves the file's value
    common: dict[str, Any] = {
        "backbone.name": cfg.backbone.name, "backbone.device": cfg.backbone.device, "backbone.model": model,
        # e.g. Show-o's timesteps / vq_model / tokenizer: the trainers load it the same way
        "backbone.options": dict(cfg.backbone.options) or None,
        "run.seed": cfg.seed + round_index, "prompts": str(train_prompts), "run.progress": cfg.progress,
        "run.report_to": list(cfg.report_to)}
    if cfg.train == "raft":
        return raft(cfg, folder, train_prompts, model, common)
    summary: dict[str, Any] = {}
    start = model
    if cfg.train in ("sft", "both"):
        from unirl_kit.training.sft import run_sft

        out = folder / ("train" if cfg.train == "sft" else "train_sft")
        sft = load_config(SFTConfig, Path(cfg.sft_config) if cfg.sft_config else None,
                          {**common, "run.out": str(out)}, cfg.sft_overrides)
        summary["sft"] = run_sft(sft, resume=(out / "checkpoints").exists())
        start = str(out / "final")
    if cfg.train in ("grpo", "both"):
        from unirl_kit.training.grpo import run_grpo

        out = folder / "train"
        grpo = load_config(GRPOConfig, Path(cfg.grpo_config) if cfg.grpo_config else None,
                           {**common, "run.out": str(out), "backbone.model": start}, cfg.grpo_overrides)
        summary["grpo"] = run_grpo(grpo, resume=(out / "checkpoints").exists())
    return summary


@holds_output_locks
def run_loop(cfg: LoopConfig) -> dict[str, Any]:
    check_loop(cfg)
    out = Path(cfg.out)
    lock_output(out)
    if (out / "prompts").exists() or any(out.glob("round-*")):  # a rerun continues the same loop or none
        check_same_run(out, cfg, "loop")
    write_run_info(out, cfg, "loop")
    train_prompts, eval_prompts = make_prompts(cfg, out)
    t0 = time.perf_counter()
    stages = [(r, stage) for r in range(cfg.rounds + 1) for stage in (("train", "eval") if r else ("eval",))]
    done = [_done(out / f"round-{r:03d}", stage) is not None for r, stage in stages]
    evaluated = [r for (r, stage), d in zip(stages, done, strict=True) if stage == "eval" and d]
    resumed = next(r for r in range(cfg.rounds + 2) if r not in evaluated) - 1  # rounds 0..this are tracked
    with Tracker(out, cfg.report_to, resumed, to_dict(cfg), str(out)) as tracker, \
            Progress("loop", cfg.progress, bar=False) as progress:  # each stage draws its own bar
        task = progress.task("loop", len(stages), "stages", completed=sum(done))
        for (r, stage), finished in zip(stages, done, strict=True):
            if finished:
                continue
            folder = out / f"round-{r:03d}"
            folder.mkdir(exist_ok=True)
            what = f"train ({cfg.train})" if stage == "train" else "eval"
            if cfg.progress:
                log.info("round %d/%d: %s", r, cfg.rounds, what)
            task.update(info=f"round {r}: {what}")
            t = time.perf_counter()
            if stage == "train":
                info = train(cfg, folder, train_prompts, model_of(cfg, out, r - 1), r)
                _finish(folder, "train", {"seconds": round(time.perf_counter() - t, 1), **_jsonable(info)})
            else:
                info = evaluate(cfg, folder, eval_prompts, model_of(cfg, out, r))
                track_round(tracker, r, info, folder / "samples")
                _finish(folder, "eval", {"seconds": round(time.perf_counter() - t, 1), "geneval": info["geneval"],
                                         "understanding": _jsonable(info["understanding"])})
            task.advance()
    from unirl_kit.loop.report import write_report

    report = write_report(out)
    report["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    return report


def round_scalars(info: dict[str, Any]) -> dict[str, float]:
    """A round's eval numbers as tracker scalars: GenEval overall and per tag, every understanding
    metric (`understanding/<protocol>/<key>`), the eval images' reward means."""
    geneval = info["geneval"]
    row = {"geneval/overall": geneval["overall"], **{f"geneval/{t}": v["score"] for t, v in geneval["tags"].items()}}
    for name, metrics in (info["understanding"].get("protocols") or {}).items():
        row.update(_numeric_leaves(metrics, f"understanding/{name}"))
    overall = (info.get("scores") or {}).get("overall") or {}
    if overall:
        row["reward/mean"] = overall["total"]["mean"]
        row.update({f"reward/{n}/mean": s["mean"] for n, s in overall["rewards"].items()})
    return row


def _numeric_leaves(tree: Any, prefix: str) -> dict[str, float]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numeric_leaves(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def track_round(tracker: Tracker, round_index: int, info: dict[str, Any], samples: Path, n: int = 8) -> None:
    """The round's scalars, and a grid of the first image of its first `n` eval prompts."""
    from unirl_kit.eval.geneval.layout import load_image, scan_images
    from unirl_kit.generation.outputs import make_grid

    tracker.log_scalars(round_index, round_scalars(info))
    firsts: dict[str, str] = {}
    for item in scan_images(samples):
        firsts.setdefault(item.rel.split("/")[0], item.rel)
    chosen = list(firsts.values())[:n]
    if chosen:
        tracker.log_image("eval/samples", round_index, make_grid([load_image(samples, rel) for rel in chosen]))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
