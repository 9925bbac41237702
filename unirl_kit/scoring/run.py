"""`unirl score`: every image of a samples folder through the composed reward, one JSON line each.

Rows are written per batch and keyed by the image's path, so a rerun scores only what is missing.
Under torchrun rank r scores images r, r + world, ... into OUT.rank{r}.jsonl and rank 0 merges, as
`eval geneval` does. The reward set, weights and options (and the backbone, when a reward asks it)
of the first run are kept in OUT.rewards.json: a rerun with others is refused, since their scores
would mix silently into one file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unirl_kit.backbones.config import (
    MOVED_BACKBONE_KEYS,
    BackboneConfig,
    build_backbone,
    check_inference,
    inference_backbone,
)
from unirl_kit.config import check_ranges, to_dict, write_run_info
from unirl_kit.distributed import RANK_TIMEOUT_S
from unirl_kit.eval.geneval.layout import JOIN_KEY, ImageItem, add_join_key, load_image, scan_images
from unirl_kit.jsonl import read_json, write_atomic
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.registry import registry
from unirl_kit.rewards.base import ComposedReward, RewardError, Sample, build_rewards, parse_reward_spec
from unirl_kit.scoring import summary as summ
from unirl_kit.sharded import ShardedJsonl, rank_parts
from unirl_kit.types import InputError, PromptSpec

SCORES = "scores.jsonl"
ANSWER_REWARD = "self-qa"  # whose details["answer"] becomes a row's `answer`
# What resuming, the summary and distill read of a row: checked on open, so a bad row names its line.
SCORE_FIELDS = {"filename": str, "prompt_index": int, "image_index": int, "tag": str, "reward": (int, float),
                "rewards": dict}


@dataclass
class ScoreConfig:
    samples_dir: str = ""
    out: str | None = None  # None: SAMPLES_DIR/scores.jsonl
    rewards: list[str] = field(default_factory=lambda: ["self-qa"])  # NAME or NAME:WEIGHT
    reward_options: dict[str, dict] = field(default_factory=dict)  # reward name -> its constructor options
    # built only when a reward needs it (e.g. self-qa: the model that answers); the trainers' shape
    backbone: BackboneConfig = field(default_factory=inference_backbone)
    batch_size: int = 32
    rank_timeout_s: float = RANK_TIMEOUT_S
    progress: bool = True
    MOVED_KEYS: ClassVar[dict[str, str]] = MOVED_BACKBONE_KEYS  # the flat keys before issue 19


def scores_path(cfg: ScoreConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path(cfg.samples_dir) / SCORES


def sibling(out: Path, suffix: str) -> Path:
    """A file beside the scores file named after it: scores.jsonl -> scores<suffix>."""
    return out.with_name(out.stem + suffix)


def summary_path(out: Path) -> Path:
    return sibling(out, "_summary.json")


def _check(cfg: ScoreConfig, weights: list[tuple[str, float]]) -> None:
    """Cheap checks, all before a model loads."""
    if not cfg.samples_dir:
        raise InputError("score needs SAMPLES_DIR (a `unirl generate` output or any GenEval-layout folder)")
    check_ranges(cfg)
    check_inference(cfg.backbone, "score")
    if scores_path(cfg).is_dir():
        raise InputError(f"--out {scores_path(cfg)}: is a folder; give the scores file, e.g. {scores_path(cfg) / SCORES}")
    names = [n for n, _ in weights]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InputError(f"--reward {twice!r} given twice; give each reward once, with its weight")
    unknown = sorted(set(cfg.reward_options) - set(names))
    if unknown:
        raise InputError(f"reward_options: {unknown[0]!r} is not among the rewards given ({', '.join(names)})")


def _fingerprint(cfg: ScoreConfig, weights: list[tuple[str, float]], needs_backbone: bool) -> dict[str, Any]:
    """What makes a score what it is (JSON-normalised so a reread header compares equal)."""
    fp: dict[str, Any] = {"rewards": dict(weights), "reward_options": to_dict(cfg.reward_options)}
    if needs_backbone:  # flat keys, as before issue 19: the .rewards.json of older runs still compares equal
        fp.update(backbone=cfg.backbone.name, model=cfg.backbone.model, backbone_options=to_dict(cfg.backbone.options))
    return json.loads(json.dumps(fp))


def _check_same_rewards(out: Path, fp: dict[str, Any]) -> None:
    header = sibling(out, ".rewards.json")
    has_scores = (out.is_file() and out.stat().st_size > 0) or bool(rank_parts(out))
    if not header.is_file() or not has_scores:
        return
    try:
        old = read_json(header)
    except InputError as exc:
        raise InputError(f"{exc}; use a new --out, or delete {out} to start over") from None
    if not isinstance(old, dict):
        raise InputError(f"{header}: expected a JSON object; use a new --out, or delete {out} to start over")
    changed = [k for k in [*fp, *(k for k in old if k not in fp)] if old.get(k) != fp.get(k)]  # rewards first
    if changed:
        shown = "; ".join(f"{k}: {old.get(k, '(absent)')!r} -> {fp.get(k, '(absent)')!r}" for k in changed)
        raise InputError(f"{out}: holds scores made with other settings ({shown}); use a new --out (or delete "
                         "it to start over)")


def with_question(spec: PromptSpec) -> PromptSpec:
    """UniRL's question/answer filled in where the metadata line has none (plain GenEval files)."""
    if spec.question is not None and spec.answer is not None:
        return spec
    from unirl_kit.prompts.qa import question_and_truth

    try:
        q, a = question_and_truth(spec)
    except (ValueError, KeyError, IndexError):  # not one of the six tags, or malformed: no template
        return spec
    return dataclasses.replace(spec, question=q, answer=a)


def _tokens(samples_dir: Path, folder: str, image_index: int) -> Any:
    """Row `image_index` of the folder's tokens file (read lazily), or None when not recorded."""
    from unirl_kit.generation.outputs import TOKENS_FILE, TOKENS_FIX

    path = samples_dir / folder / TOKENS_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    from unirl_kit.checkpoint import safetensors_errors

    with safetensors_errors(path, TOKENS_FIX), safe_open(str(path), framework="pt") as fh:
        if "tokens" not in fh.keys():
            return None
        rows = fh.get_slice("tokens")
        if image_index >= rows.get_shape()[0]:
            return None
        return rows[image_index:image_index + 1][0]


def make_sample(samples_dir: Path, item: ImageItem, specs: dict[str, PromptSpec]) -> Sample:
    folder, _, name = item.rel.split("/")
    if folder not in specs:
        specs[folder] = with_question(item.spec)
    return Sample(spec=specs[folder], image=load_image(samples_dir, item.rel),
                  tokens=_tokens(samples_dir, folder, int(name[:-4])), prompt_index=int(folder),
                  image_index=int(name[:-4]), path=item.rel)


def make_row(sample: Sample, total: float, record: dict[str, Any]) -> dict[str, Any]:
    for name, detail in record["details"].items():
        try:
            json.dumps(detail)
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward {name!r} gave details for {sample.label} that are not JSON ({exc}); "
                              "details must be plain numbers, strings, lists and dicts") from None
    qa = record["details"].get(ANSWER_REWARD)
    answer = qa.get("answer") if isinstance(qa, dict) else None
    return {"filename": sample.path, JOIN_KEY: sample.path, "prompt_index": sample.prompt_index, "image_index": sample.image_index,
            "tag": sample.spec.tag, "prompt": sample.spec.prompt, "reward": total, "rewards": record["rewards"],
            "answer": answer, "details": record["details"]}


def _rows_for(batch: Sequence[ImageItem], shards: ShardedJsonl[ImageItem], composed: ComposedReward,
              cfg: ScoreConfig, specs: dict[str, PromptSpec]) -> list[dict[str, Any]]:
    """The score rows of one batch; a reward's failure says what is kept and how to resume."""
    samples = [make_sample(Path(cfg.samples_dir), it, specs) for it in batch]
    try:
        out = composed(samples)
        return [make_row(s, t, r) for s, t, r in zip(samples, out.scores, out.details, strict=True)]
    except RewardError as exc:
        raise RewardError(f"{exc} (the {len(shards.store.rows)} images scored before are kept in "
                          f"{shards.store.path}; rerun the same command to resume)") from exc


@holds_output_locks
def run_score(cfg: ScoreConfig, backbone: Any = None) -> dict[str, Any]:
    """Score what is missing, merge the ranks' parts, summarise; returns the summary ({} on ranks > 0)."""
    weights = [parse_reward_spec(s) for s in cfg.rewards]
    _check(cfg, weights)
    reg = registry("rewards")
    needs_backbone = any(getattr(reg.get(n), "needs_backbone", False) for n, _ in weights)  # did-you-mean
    samples_dir, out = Path(cfg.samples_dir), scores_path(cfg)
    items = scan_images(samples_dir)
    fp = _fingerprint(cfg, weights, needs_backbone)
    _check_same_rewards(out, fp)  # every rank, before anything is written or loaded
    if needs_backbone and backbone is None:
        backbone = build_backbone(cfg.backbone)
    composed = build_rewards(cfg.rewards, cfg.reward_options, backbone if needs_backbone else None)
    lock_output(out.parent, prefix=f"{out.stem}.")
    # a damaged file fails before the run info is rewritten
    shards: ShardedJsonl[ImageItem] = ShardedJsonl(out, "filename", SCORE_FIELDS)
    if shards.rank == 0:
        write_run_info(out.parent, cfg, "score", prefix=f"{out.stem}.")
        write_atomic(sibling(out, ".rewards.json"), json.dumps(fp, indent=2) + "\n")
    specs: dict[str, PromptSpec] = {}
    rows = shards.run(items, lambda it: it.rel, lambda batch: _rows_for(batch, shards, composed, cfg, specs),
                      cfg.batch_size, timeout_s=cfg.rank_timeout_s, stage="score", label="score",
                      show_progress=cfg.progress, unit="images", upgrade=add_join_key)
    if rows is None:
        return {}
    summary = summ.summarize(rows, weights)
    write_atomic(summary_path(out), summ.dumps(summary))
    return summary

