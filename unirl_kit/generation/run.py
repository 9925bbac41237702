"""`unirl generate`: resolve, check, then sample every unfinished prompt in batches of images.

Determinism: image k of prompt i is drawn with `image_seed(seed, i, k)` (i = the prompt's line index
in the file), so batch size, resuming and the number of torchrun ranks never change an image. Ranks
take prompts i = rank, rank + world, ...; each prompt folder is written by exactly one rank.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unirl_kit.backbones.config import (
    MOVED_BACKBONE_KEYS,
    MOVED_SAMPLING_KEYS,
    BackboneConfig,
    SamplingConfig,
    build_backbone,
    check_inference,
    inference_backbone,
)
from unirl_kit.config import check_ranges, to_dict, translate_moved, write_run_info
from unirl_kit.distributed import rank_and_world
from unirl_kit.eval.geneval.layout import write_prompt_folder
from unirl_kit.generation.prompts import read_prompt_file
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.progress import Progress
from unirl_kit.types import InputError

# Settings that change what an image is: a resumed run must use the same ones.
_FINGERPRINT = ("backbone.name", "backbone.model", "backbone.options", "group_size", "seed", "sampling.cfg_scale",
                "sampling.temperature", "sampling.top_k", "sampling.top_p")


@dataclass
class GenerateConfig:
    # which model, loaded how (backbone.name, .model, .options, .device, .dtype) and how it samples: the
    # trainers' shape (backbones/config.py)
    backbone: BackboneConfig = field(default_factory=inference_backbone)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # temperature 0 = greedy
    prompts: str = ""
    out: str = ""
    group_size: int = 4
    batch_size: int = 16  # images per sampler call (cond + uncond rows: twice this many sequences)
    seed: int = 0
    progress: bool = True
    MOVED_KEYS: ClassVar[dict[str, str]] = {**MOVED_BACKBONE_KEYS, **MOVED_SAMPLING_KEYS}  # before issue 19


def _check(cfg: GenerateConfig) -> None:
    if not cfg.prompts or not cfg.out:
        raise InputError("generate needs --prompts FILE and --out DIR")
    check_ranges(cfg)
    check_inference(cfg.backbone, "generate")


_ABSENT = object()


def _at(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a nested mapping, or _ABSENT."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _check_same_run(out: Path, cfg: GenerateConfig) -> None:
    """Refuse to resume into images made with other settings (they would mix silently). A config.yaml
    written before issue 19 (flat `model`, `cfg_scale`, ...) is read in today's shape."""
    import yaml

    old_path = out / "config.yaml"
    if not old_path.is_file():
        return
    saved = yaml.safe_load(old_path.read_text()) or {}
    old, new = translate_moved(GenerateConfig, saved, str(old_path), warn=False), to_dict(cfg)
    for key in _FINGERPRINT:  # None: not resolved yet (checked again once the backbone has resolved it)
        was, now = _at(old, key), _at(new, key)
        if was is not _ABSENT and now is not None and was != now:
            raise InputError(f"{out}: holds images made with {key}={was!r}, not {now!r}; "
                             "use another --out, or delete the folder to start over")


@holds_output_locks
def run_generate(cfg: GenerateConfig, backbone: Any = None) -> dict[str, Any]:
    """Generate every unfinished prompt of this rank; returns counts and throughput."""
    _check(cfg)
    out = Path(cfg.out)
    metas = read_prompt_file(Path(cfg.prompts))
    _check_same_run(out, cfg)
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
    from unirl_kit.backbones.base import image_seed, resolve_cfg_scale  # torch-heavy: after the cheap checks

    if cfg.sampling.cfg_scale is None:
        sampling = dataclasses.replace(cfg.sampling, cfg_scale=resolve_cfg_scale(backbone, None))
        cfg = dataclasses.replace(cfg, sampling=sampling)
        _check_same_run(out, cfg)
    from unirl_kit.generation.outputs import is_done
    try:
        backbone.check_prompts([m["prompt"] for m in metas])
    except InputError as exc:
        raise InputError(f"{cfg.prompts}: {exc}") from None
    rank, world = rank_and_world()
    lock_output(out)
    mine = list(range(rank, len(metas), world))
    for i in mine:  # fails at once if OUT holds another prompt set (before any image is skipped as done)
        write_prompt_folder(out, i, metas[i])
    todo = [i for i in mine if not is_done(out, i, cfg.group_size)]  # a damaged tokens file fails here
    if rank == 0:  # after the checks of what OUT holds: a refused resume leaves its config.yaml as it was
        write_run_info(out, cfg, "generate")
    draw = cfg.sampling  # the per-prompt header keeps its flat keys: readers of older samples folders rely on them
    header = {"backbone": cfg.backbone.name, "model": cfg.backbone.model, "cfg_scale": draw.cfg_scale,
              "temperature": draw.temperature, "top_k": draw.top_k, "top_p": draw.top_p, "seed": cfg.seed}
    rows = [(i, k) for i in todo for k in range(cfg.group_size)]
    pending: dict[int, dict[int, tuple]] = {}
    shown = cfg.progress and rank == 0
    hook = shown and _takes_on_step(backbone)
    t0 = time.perf_counter()
    with Progress("generate", shown) as progress:
        task = progress.task("generate", len(rows), "images")
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start:start + cfg.batch_size]
            # images' worth of work done inside the batch: the bar moves while one batch is drawn
            extra = {"on_step": lambda share, s=start, n=len(batch): task.update(s + share * n)} if hook else {}
            result = backbone.generate(
                [metas[i]["prompt"] for i, _ in batch], group_size=1,
                seeds=[[image_seed(cfg.seed, i, k)] for i, k in batch], cfg_scale=draw.cfg_scale,
                temperature=draw.temperature, top_k=draw.top_k, top_p=draw.top_p, **extra)
            for j, (i, k) in enumerate(batch):
                trajectory = None if result.trajectory is None else result.trajectory[j]
                pending.setdefault(i, {})[k] = (result.images[j], result.tokens[j], result.logprobs[j],
                                                result.seeds[j], trajectory)
                if len(pending[i]) == cfg.group_size:
                    _write(out, i, pending.pop(i), header)
            task.update(start + len(batch))
    seconds = time.perf_counter() - t0
    return {"prompts": len(mine), "already_done": len(mine) - len(todo), "images": len(rows),
            "seconds": round(seconds, 2), "images_per_s": round(len(rows) / seconds, 3) if rows else 0.0,
            "rank": rank, "world": world}


def _write(out: Path, index: int, parts: dict[int, tuple], header: dict) -> None:
    import torch

    from unirl_kit.generation.outputs import write_prompt_outputs

    order = sorted(parts)
    trajectory = None if parts[order[0]][4] is None else torch.stack([parts[k][4] for k in order])
    write_prompt_outputs(out, index, [parts[k][0] for k in order], torch.stack([parts[k][1] for k in order]),
                         torch.stack([parts[k][2] for k in order]), [parts[k][3] for k in order], header,
                         trajectory)


def _takes_on_step(backbone: Any) -> bool:
    """Whether the backbone's `generate` reports its progress inside a batch (optional, base.py)."""
    import inspect

    try:
        return "on_step" in inspect.signature(backbone.generate).parameters
    except (TypeError, ValueError):
        return False
