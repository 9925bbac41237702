"""`unirl eval understanding`: run the chosen protocols with one backbone; resumable per protocol.

Each finished protocol is saved as OUT/protocol_NAME.json with the fingerprint of what decides its
numbers (model, inputs and their contents, protocol options); a rerun skips those whose fingerprint
matches and refuses to mix in results made otherwise. The backbone loads only when something is left.
Inside a protocol, answers are kept as they come in OUT/answers/ (`answer_all` over `ShardedJsonl`), so a
kill loses at most a batch and torchrun ranks share the questions.
Outputs: summary.json (every protocol's metrics), summary.md (tables), rows.jsonl (per item, with a
`protocol` field), config.yaml and versions.json.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from unirl_kit.backbones.config import (
    MOVED_BACKBONE_KEYS,
    BackboneConfig,
    build_backbone,
    check_inference,
    inference_backbone,
)
from unirl_kit.config import check_ranges, to_dict, write_run_info
from unirl_kit.distributed import rank_and_world
from unirl_kit.eval.understanding.common import results_path
from unirl_kit.eval.understanding.protocols import Context, plan
from unirl_kit.jsonl import read_json, sha256_file, write_atomic
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.progress import Progress
from unirl_kit.types import InputError


@dataclass
class PopeOptions:
    n_images: int = 60  # clean renders to draw, or generated images to sample (0: all of them)
    strategy: Literal["random", "popular", "adversarial"] = "random"
    source: Literal["clean", "generated"] = "clean"  # generated: images_dir + geneval_results


@dataclass
class ImbalanceOptions:
    gen_rule: Literal["any", "majority", "all"] = "majority"  # majority: strictly more than half
    und_rule: Literal["any", "majority", "all"] = "majority"


@dataclass
class UnderstandingConfig:
    protocols: list[str] = field(default_factory=lambda: ["clean"])
    out: str = ""
    images_dir: str | None = None  # a `unirl generate` folder (GenEval layout)
    geneval_results: str | None = None  # its results.jsonl from `unirl eval geneval` (or that folder)
    vqa_file: str | None = None
    per_tag: int = 50  # clean renders per question type
    world: str = "shapes"
    pope: PopeOptions = field(default_factory=PopeOptions)
    imbalance: ImbalanceOptions = field(default_factory=ImbalanceOptions)
    # the model that answers (backbone.model None: its own default, tiny-shapes: the shipped weights)
    backbone: BackboneConfig = field(default_factory=inference_backbone)
    batch_size: int = 32
    max_new_tokens: int = 32
    seed: int = 0
    progress: bool = True
    MOVED_KEYS: ClassVar[dict[str, str]] = MOVED_BACKBONE_KEYS  # the flat keys before issue 19


def _digest(path: str | Path) -> str:
    return sha256_file(Path(path))[:16]


def model_stamp(cfg: UnderstandingConfig, backbone: Any = None) -> str | None:
    """Size and the last MiB of each weights file: retrained weights at the same path are not the same model."""
    source = cfg.backbone.model or getattr(backbone, "source", None)
    if source is None and backbone is None:
        from unirl_kit.registry import registry

        source = getattr(registry("backbones").get(cfg.backbone.name), "DEFAULT_MODEL", None)
    if source is None or not Path(source).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(Path(source).glob("*.safetensors")):
        size = f.stat().st_size
        with f.open("rb") as fh:
            fh.seek(max(0, size - 2**20))
            h.update(f"{f.name}:{size}".encode() + fh.read())
    return h.hexdigest()[:16]


def fingerprint(cfg: UnderstandingConfig, name: str, stamp: str | None) -> dict[str, Any]:
    """What decides a protocol's numbers (device and batch size do not)."""
    d, b = to_dict(cfg), to_dict(cfg.backbone)
    # flat keys, as before issue 19: protocol files of older runs still match
    fp: dict[str, Any] = {"backbone": b["name"], "model": b["model"], "backbone_options": b["options"],
                          "dtype": b["dtype"], "max_new_tokens": cfg.max_new_tokens}
    fp["model_stamp"] = stamp
    generated = name in ("geneval_correct", "imbalance") or (name == "pope" and cfg.pope.source == "generated")
    if generated:
        fp.update(images_dir=cfg.images_dir, geneval_results=cfg.geneval_results,
                  geneval_results_sha=_digest(results_path(str(cfg.geneval_results))))
    if name in ("clean", "pope"):
        fp.update(seed=cfg.seed, world=cfg.world)
    if name == "clean":
        fp["per_tag"] = cfg.per_tag
    if name == "pope":
        fp["pope"] = d["pope"]
    if name == "imbalance":
        fp["imbalance"] = d["imbalance"]
    if name == "vqa":
        fp.update(vqa_file=cfg.vqa_file, vqa_sha=_digest(str(cfg.vqa_file)))
    return fp


def answers_dir(out: Path, name: str, fp: dict[str, Any]) -> Path:
    """OUT/answers/NAME-HASH/: the protocol's answers as they come (resumable, shared by torchrun ranks),
    named by its fingerprint, so answers of another model or input are never reused."""
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out / "answers" / f"{name}-{digest}"


def _finished(out: Path, name: str, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result of a protocol run with this fingerprint; an error for one run otherwise."""
    path = out / f"protocol_{name}.json"
    if not path.is_file():
        return None
    try:
        saved = read_json(path)
    except InputError:
        return None  # torn by a kill (writes are atomic, so only by hand): run it again
    if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint", {}), dict):
        return None
    for key, value in fp.items():
        old = saved.get("fingerprint", {}).get(key)
        if old != value:
            raise InputError(f"{path}: made with {key}={old!r}, not {value!r}; use another --out, or delete "
                             "that file to run the protocol again")
    return saved


def _check(cfg: UnderstandingConfig) -> None:
    if not cfg.out:
        raise InputError("eval understanding needs --out DIR")
    check_ranges(cfg)
    check_inference(cfg.backbone, "eval understanding")


@holds_output_locks
def run_understanding(cfg: UnderstandingConfig, backbone: Any = None) -> dict[str, Any]:
    """Run what is not finished yet, then write the summary over every requested protocol."""
    _check(cfg)
    tasks = plan(cfg, list(cfg.protocols))
    out = Path(cfg.out)
    stamp = model_stamp(cfg, backbone)
    fps = {name: fingerprint(cfg, name, stamp) for name in tasks}
    results = {name: _finished(out, name, fps[name]) for name in tasks}
    lock_output(out)
    todo = [name for name in tasks if results[name] is None]
    writer = rank_and_world()[0] == 0  # one writer of the output files
    if todo and backbone is None:
        backbone = build_backbone(cfg.backbone)
    with Progress("eval.understanding", cfg.progress) as progress:
        ctx = Context(cfg.batch_size, cfg.max_new_tokens,
                      lambda label, total: progress.task(label, total, "answers").advance)
        if results.get("geneval_correct") is not None:  # imbalance reuses the answers already given
            ctx.self_answers.update((r["image"], r["answer"]) for r in results["geneval_correct"]["rows"])
        for name in todo:
            t0 = time.perf_counter()
            ctx.answers_dir = answers_dir(out, name, fps[name])
            result = tasks[name](backbone, ctx)
            results[name] = {"protocol": name, "fingerprint": fps[name], "seconds": round(time.perf_counter() - t0, 2),
                             **result}
            if writer:
                write_atomic(out / f"protocol_{name}.json", json.dumps(results[name]) + "\n")
    from unirl_kit.eval.understanding.report import to_markdown

    summary = {"backbone": cfg.backbone.name, "model": cfg.backbone.model, "protocols": {n: results[n]["metrics"] for n in tasks},
               "seconds": {n: results[n].get("seconds") for n in tasks}}
    if not writer:  # under torchrun every rank computed the same results (the answers are shared)
        return summary
    # Written with the summary it describes, not before: resuming goes by each protocol's fingerprint,
    # and a run that fails (a bad VQA image, a bad model) leaves the folder's config.yaml as it was.
    write_run_info(out, cfg, "eval understanding")
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(out / "summary.md", to_markdown(summary))
    write_atomic(out / "rows.jsonl", "".join(json.dumps({"protocol": n, **r}) + "\n"
                                             for n in tasks for r in results[n]["rows"]))
    return summary

