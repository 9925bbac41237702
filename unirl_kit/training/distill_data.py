"""The images SFT `mode: distill` trains on: the judge's best of each prompt of a scored samples folder.

Offline self-RAFT: `unirl generate` draws N images per training prompt, `unirl score` judges every one
(`scores.jsonl`, the composed `reward`), and distill keeps the `keep_top` best of each prompt (none of a
prompt whose rewards all tie; with `threshold`, only those at or above it), then trains the generation
NLL on them for as many steps as asked. Why beside online gen-rs: each step of gen-rs trains on the few
images it just drew (4 of 32 on tiny-shapes), so Adam's steps are mostly noise; a fixed set of every
prompt's best lets a step average over many prompts (measured: benchmarks/README.md, issue 20).
Only token ids are kept in memory (no pixels), so a folder of any size costs kept x T integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unirl_kit.jsonl import iter_jsonl, read_json
from unirl_kit.prompts.schema import parse_spec
from unirl_kit.types import InputError, PromptSpec


@dataclass
class KeptImage:
    spec: PromptSpec
    prompt_index: int
    image_index: int
    reward: float
    tokens: torch.Tensor  # [T] int64


def check_judge(samples: Path, rewards: list[str], reward_options: dict) -> None:
    """The folder was scored by the judge the config names (`rewards`, `reward_options`): the weights
    and model card of a distill / dpo run say which judge chose its images, so that must be true."""
    from unirl_kit.config import to_dict
    from unirl_kit.jsonl import read_json
    from unirl_kit.rewards.base import parse_reward_spec

    header = samples / "scores.rewards.json"
    if not header.is_file():
        return  # scores written before the header existed: nothing to compare
    judged = read_json(header)
    named = {"rewards": dict(map(parse_reward_spec, rewards)), "reward_options": to_dict(reward_options)}
    differ = [k for k in named if not isinstance(judged, dict) or judged.get(k) != named[k]]
    if differ:
        shown = "; ".join(f"{k}: scored with {judged.get(k) if isinstance(judged, dict) else None!r}, "
                          f"config {named[k]!r}" for k in differ)
        raise InputError(f"{samples}/scores.jsonl was judged otherwise than the config says ({shown}); set "
                         "rewards / reward_options to the judge that scored it, or score the folder with them")


def _score_rows(path: Path) -> dict[int, list[dict]]:
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: not a folder; give samples= a `unirl generate` folder scored by `unirl score`")
    if not path.is_file():
        raise InputError(f"{path}: no scores; run `unirl score {path.parent}` with the judge first")
    groups: dict[int, list[dict]] = {}
    for n, row in iter_jsonl(path):  # line by line: only three numbers kept a row
        try:
            key, image, reward = int(row["prompt_index"]), int(row["image_index"]), float(row["reward"])
        except (ValueError, KeyError, TypeError, OverflowError):
            raise InputError(f"{path}: line {n}: expected a `unirl score` row with prompt_index, image_index "
                             "and reward") from None
        if not np.isfinite(reward):
            raise InputError(f"{path}: line {n}: reward is {reward}; a reward must be finite")
        groups.setdefault(key, []).append({"image": image, "reward": reward})
    return groups


def _prompt_folder(samples: Path, index: int) -> tuple[PromptSpec, torch.Tensor]:
    """(spec, [N, T] token ids) of one prompt folder of a `unirl generate` output."""
    from unirl_kit.generation.outputs import read_prompt_samples

    folder = samples / f"{index:05d}"
    try:
        spec = parse_spec(read_json(folder / "metadata.jsonl"), f"{folder / 'metadata.jsonl'}: line 1")
        return spec, read_prompt_samples(samples, index)["tokens"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{folder}: not a `unirl generate` prompt folder ({type(exc).__name__}: {exc})") from None


def _kept_image(samples: Path, spec: PromptSpec, tokens: torch.Tensor, index: int, row: dict) -> KeptImage:
    if row["image"] >= tokens.shape[0]:
        raise InputError(f"{samples / f'{index:05d}'}: scores name image {row['image']}, but tokens.safetensors "
                         f"holds {tokens.shape[0]}")
    return KeptImage(spec, index, row["image"], row["reward"], tokens[row["image"]].clone())


def load_kept(samples: Path, keep_top: int, threshold: float | None) -> list[KeptImage]:
    """The kept images of every prompt folder, in folder then reward order."""
    from unirl_kit.training.sft_math import keep_rows

    samples = Path(samples)
    kept: list[KeptImage] = []
    for index, rows in sorted(_score_rows(samples / "scores.jsonl").items()):
        rows = sorted(rows, key=lambda r: r["image"])
        picks = keep_rows([r["reward"] for r in rows], len(rows), threshold, keep_top)
        if not picks:
            continue
        spec, tokens = _prompt_folder(samples, index)
        kept += [_kept_image(samples, spec, tokens, index, rows[p]) for p in picks]
    if not kept:
        raise InputError(f"{samples}: no image kept (every prompt's rewards tie, or none reach the threshold)")
    return kept


def load_pairs(samples: Path) -> list[KeptImage]:
    """DPO's pairs: per prompt whose rewards do not all tie, its best image then its worst (ties to the
    earlier image), flattened as [chosen, rejected, chosen, rejected, ...]."""
    samples = Path(samples)
    pairs: list[KeptImage] = []
    for index, rows in sorted(_score_rows(samples / "scores.jsonl").items()):
        rows = sorted(rows, key=lambda r: r["image"])
        if max(r["reward"] for r in rows) == min(r["reward"] for r in rows):
            continue
        chosen = min(rows, key=lambda r: (-r["reward"], r["image"]))
        rejected = min(rows, key=lambda r: (r["reward"], r["image"]))
        spec, tokens = _prompt_folder(samples, index)
        pairs += [_kept_image(samples, spec, tokens, index, chosen), _kept_image(samples, spec, tokens, index, rejected)]
    if not pairs:
        raise InputError(f"{samples}: no pair (every prompt's rewards tie)")
    return pairs


def distill_rows(kept: list[KeptImage], step: int, per_step: int, seed: int, rank: int, world: int, unit: int = 1
                 ) -> tuple[list[KeptImage], int]:
    """(this rank's rows, global offset in units) of step `step`: `per_step` units of `unit` consecutive
    rows (1: a kept image; 2: a DPO pair), in a fresh order every epoch (seeded by (seed, epoch)), split
    over ranks; the order is a function of the step."""
    n = len(kept) // unit
    rows: list[KeptImage] = []
    for j in range(step * per_step, (step + 1) * per_step):
        epoch, at = divmod(j, n)
        u = int(np.random.default_rng([seed, 11, epoch]).permutation(n)[at])
        rows += kept[u * unit:(u + 1) * unit]
    per = per_step // world
    return rows[rank * per * unit:(rank + 1) * per * unit], rank * per
