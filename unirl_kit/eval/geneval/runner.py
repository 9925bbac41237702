"""`unirl eval geneval`: detect, keep, judge and summarise every image; resumable and rank-sharded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unirl_kit.config import check_ranges, same_setting, to_dict, write_run_info
from unirl_kit.distributed import RANK_TIMEOUT_S
from unirl_kit.eval.geneval import summary as summ
from unirl_kit.eval.geneval.detectors import check_detector
from unirl_kit.eval.geneval.layout import JOIN_KEY, ImageItem, add_join_key, load_image, scan_images
from unirl_kit.eval.geneval.rules import RuleOptions, evaluate, keep_detections
from unirl_kit.jsonl import write_atomic
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.registry import registry
from unirl_kit.sharded import ShardedJsonl, rank_parts
from unirl_kit.types import InputError, PromptSpec, Verdict

RESULTS = "results.jsonl"
RESULT_FIELDS = {"filename": str, "tag": str, "correct": bool}  # what resuming and the summary read of a row


@dataclass
class GenevalConfig:
    images_dir: str = ""
    out: str = ""
    detector: str = "shapes"
    detector_options: dict = field(default_factory=dict)
    detections: str | None = None  # shortcut for detector_options.path of `precomputed`
    color_classifier: str = "auto"  # auto: the detector's own default
    color_options: dict = field(default_factory=dict)
    rules: RuleOptions = field(default_factory=RuleOptions)
    batch_size: int = 16
    rank_timeout_s: float = RANK_TIMEOUT_S
    progress: bool = True


def build_judges(cfg: GenevalConfig) -> tuple[Any, Any]:
    """The detector and colour classifier the config names."""
    det_opts = dict(cfg.detector_options)
    if cfg.detections is not None:
        if cfg.detector != "precomputed":
            raise InputError("--detections only goes with --detector precomputed")
        det_opts["path"] = cfg.detections
    if cfg.detector == "precomputed" and "path" not in det_opts:
        raise InputError("--detector precomputed needs --detections FILE.jsonl")
    detector = check_detector(registry("detectors").build(cfg.detector, **det_opts), cfg.detector)
    color_name = detector.default_color_classifier if cfg.color_classifier == "auto" else cfg.color_classifier
    colors = registry("color_classifiers").build(color_name, **cfg.color_options)
    return detector, colors


def check_vocabulary(items: Sequence[ImageItem], detector: Any, colors: Any, images_dir: Path, name: str) -> None:
    """Every class and colour the prompts ask for must be known to the judges, before any work."""
    seen = set()
    for item in items:
        if item.rel.split("/")[0] in seen:
            continue
        seen.add(item.rel.split("/")[0])
        where = images_dir / item.rel.split("/")[0] / "metadata.jsonl"
        for req in (*item.spec.include, *item.spec.exclude):
            if detector.classes is not None and req.cls not in detector.classes:
                raise InputError(f"{where}: class {req.cls!r} is unknown to detector {name!r} "
                                 f"(knows {len(detector.classes)} classes); use a detector trained on it")
            if req.color is not None and req.color not in colors.colors:
                raise InputError(f"{where}: colour {req.color!r} is unknown to the colour classifier "
                                 f"(knows {', '.join(colors.colors)})")


def verdict_for(spec: PromptSpec, image: Any, detections: list, colors: Any, rules: RuleOptions) -> Verdict:
    """GenEval's verdict on one image from its detections (shared by eval, rewards and gates)."""
    kept = keep_detections(detections, spec.tag, rules)
    return evaluate(spec, kept, lambda found, cls: colors.classify(image, found, cls), rules)


def judge_item(item: ImageItem, image: Any, detections: list, colors: Any, rules: RuleOptions) -> dict[str, Any]:
    """One official results row."""
    verdict = verdict_for(item.spec, image, detections, colors, rules)
    return {
        "filename": item.filename,
        JOIN_KEY: item.rel,
        "tag": item.spec.tag,
        "prompt": item.spec.prompt,
        "correct": verdict.correct,
        "reason": verdict.reason,
        "metadata": json.dumps(item.metadata),
        "details": json.dumps(verdict.details),
    }


def _fingerprint(cfg: GenevalConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    return {k: d[k] for k in ("images_dir", "detector", "detector_options", "detections",
                              "color_classifier", "color_options", "rules")}


def _check_same_run(out: Path, cfg: GenevalConfig) -> None:
    """Refuse to resume into results made with other judges or rules (they would mix silently)."""
    import yaml

    old_path = out / "config.yaml"
    has_results = (out / RESULTS).exists() or bool(rank_parts(out / RESULTS))
    if not has_results or not old_path.exists():
        return
    old = yaml.safe_load(old_path.read_text()) or {}
    new = _fingerprint(cfg)
    for key, value in new.items():
        if key in old and old[key] != value:
            same = key == "images_dir" and same_setting(old[key], value)  # its rows name images by that path
            hint = f"give IMAGES_DIR as {old[key]!r} from where it ran, " if same else ""
            raise InputError(f"{out}: holds results made with {key}={old[key]!r}, not {value!r}; {hint}use another "
                             "--out, or delete the folder to start over")


def _rows_for(batch: list[ImageItem], detector: Any, colors: Any, cfg: GenevalConfig) -> list[dict[str, Any]]:
    """The results rows of one batch of images."""
    images = [load_image(Path(cfg.images_dir), it.rel) for it in batch]
    dets = detector.detect(images, [it.rel for it in batch])
    if len(dets) != len(batch):
        raise RuntimeError(f"detector {cfg.detector!r} returned {len(dets)} results for {len(batch)} images")
    return [judge_item(it, img, d, colors, cfg.rules) for it, img, d in zip(batch, images, dets, strict=True)]


@holds_output_locks
def run_geneval(cfg: GenevalConfig) -> dict[str, Any]:
    """Score what is missing, merge, summarise; returns the summary."""
    if not cfg.images_dir or not cfg.out:
        raise InputError("eval geneval needs IMAGES_DIR and --out OUT_DIR")
    check_ranges(cfg)
    images_dir, out = Path(cfg.images_dir), Path(cfg.out)
    items = scan_images(images_dir)
    detector, colors = build_judges(cfg)
    check_vocabulary(items, detector, colors, images_dir, cfg.detector)
    detector.check_filenames([it.rel for it in items])
    _check_same_run(out, cfg)  # every rank, before anything is written
    lock_output(out)
    # a damaged file fails before config.yaml is rewritten
    shards: ShardedJsonl[ImageItem] = ShardedJsonl(out / RESULTS, "filename", RESULT_FIELDS, marker_prefix="")
    if shards.rank == 0:
        write_run_info(out, cfg, "eval geneval")
    rows = shards.run(items, lambda it: it.filename, lambda batch: _rows_for(batch, detector, colors, cfg),
                      cfg.batch_size, timeout_s=cfg.rank_timeout_s, stage="eval.geneval", label="geneval",
                      show_progress=cfg.progress, unit="images", upgrade=add_join_key)
    if rows is None:
        return {}
    summary = summ.summarize(rows)
    write_atomic(out / "summary.json", summ.dumps(summary))
    write_atomic(out / "summary.md", summ.to_markdown(summary))
    return summary
