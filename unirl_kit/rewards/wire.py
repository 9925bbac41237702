"""The reward server's JSON wire format: plain JSON and base64 PNGs, never pickle.

Pickle would let whoever can reach the server run code in it, and ties both ends to the same
classes; JSON lets a reward live in another environment (e.g. mmdet's) or another language.

request  {"version": 1, "reward": NAME, "samples": [{"spec": {...GenEval metadata...},
          "image_png": BASE64, "tokens": [int, ...] | null, "prompt_index": int,
          "image_index": int, "path": str | null}, ...]}
response {"scores": [float, ...], "details": [{...}, ...]}   or   {"error": "one line"}
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from unirl_kit.jsonl import MAX_JSON_DEPTH, parse_json
from unirl_kit.rewards.base import RewardError, RewardOutput, Sample
from unirl_kit.types import InputError

WIRE_VERSION = 1
_SAMPLE_KEYS = {"spec", "image_png", "tokens", "prompt_index", "image_index", "path"}


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback: numpy scalars/arrays and tensors become plain numbers and lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON; details holding numpy values are converted rather than refused."""
    return json.dumps(payload, default=_jsonable, separators=(",", ":")).encode("utf-8")


def loads(body: bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A request body -> JSON, or one InputError: malformed, non-UTF-8, nested deeper than
    `max_depth` (the format needs 7: request > samples > sample > spec > include > requirement > position), integers beyond 64 bits, NaN/Infinity."""
    return parse_json(body, "request", max_depth, strict=True)


def encode_image(image: Any) -> str:
    """A PIL image as base64 PNG (lossless, so the remote reward sees the very same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(text: Any, where: str) -> Any:
    """A base64 PNG -> PIL image in its own mode (the pixels as sent), held to the image pixel limit."""
    from unirl_kit.images import open_image

    if not isinstance(text, str):
        raise InputError(f"{where}: expected a base64 PNG string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not valid base64") from None
    return open_image(data, where, png_only=True)


def _encode_tokens(tokens: Any) -> list[int] | None:
    if tokens is None:
        return None
    values = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    return [int(v) for v in values]


def _decode_tokens(value: Any, where: str) -> Any:
    """list[int] -> torch.LongTensor as generators record them (a plain list if torch is absent)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"{where}: expected a list of integers or null")
    try:
        import torch
    except ImportError:  # a reward env without torch cannot use tensors anyway
        return value
    return torch.tensor(value, dtype=torch.long)


def encode_samples(reward: str, samples: Sequence[Sample]) -> dict[str, Any]:
    """A scoring request for `reward` on `samples`."""
    rows = []
    for sample in samples:
        if not hasattr(sample.image, "save"):
            raise InputError(f"{sample.label}: image must be a PIL image, got {type(sample.image).__name__}")
        rows.append({"spec": sample.spec.to_json(), "image_png": encode_image(sample.image),
                     "tokens": _encode_tokens(sample.tokens), "prompt_index": int(sample.prompt_index),
                     "image_index": int(sample.image_index), "path": sample.path})
    return {"version": WIRE_VERSION, "reward": reward, "samples": rows}


def _int_field(row: dict[str, Any], key: str, where: str) -> int:
    value = row.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
    return value


def _decode_sample(row: Any, where: str) -> Sample:
    from unirl_kit.prompts.schema import parse_spec

    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object, got {type(row).__name__}")
    unknown = set(row) - _SAMPLE_KEYS
    if unknown:
        raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r} (expected {', '.join(sorted(_SAMPLE_KEYS))})")
    for key in ("spec", "image_png"):
        if key not in row:
            raise InputError(f"{where}: missing field {key!r}")
    path = row.get("path")
    if path is not None and not isinstance(path, str):
        raise InputError(f"{where}.path: expected a string or null, got {path!r}")
    return Sample(spec=parse_spec(row["spec"], f"{where}.spec"),
                  image=decode_image(row["image_png"], f"{where}.image_png"),
                  tokens=_decode_tokens(row.get("tokens"), f"{where}.tokens"),
                  prompt_index=_int_field(row, "prompt_index", where),
                  image_index=_int_field(row, "image_index", where), path=path)


def decode_samples(payload: Any, max_total_pixels: int | None = None) -> tuple[str, list[Sample]]:
    """A request -> (reward name, samples); InputError naming the field when malformed.

    max_total_pixels bounds the decoded images of one request together (a 32 MiB body of flat PNGs
    could otherwise hold hundreds of images at the per-image limit); checked after each image, so
    at most one image beyond it is ever decoded."""
    if not isinstance(payload, dict):
        raise InputError(f"request: expected a JSON object, got {type(payload).__name__}")
    version = payload.get("version")
    if version != WIRE_VERSION:
        raise InputError(f"request.version: expected {WIRE_VERSION}, got {version!r} (client and server "
                         "unirl-kit versions differ?)")
    reward = payload.get("reward")
    if not isinstance(reward, str) or not reward:
        raise InputError(f"request.reward: expected the reward's name, got {reward!r}")
    rows = payload.get("samples")
    if not isinstance(rows, list):
        raise InputError(f"request.samples: expected a list, got {type(rows).__name__}")
    samples, pixels = [], 0
    for i, row in enumerate(rows):
        samples.append(_decode_sample(row, f"request.samples[{i}]"))
        pixels += samples[-1].image.width * samples[-1].image.height
        if max_total_pixels is not None and pixels > max_total_pixels:
            raise InputError(f"request.samples[{i}]: the request's images pass {max_total_pixels:,} pixels "
                             "together; send fewer samples per request (remote.batch_size)")
    return reward, samples


def encode_output(out: RewardOutput) -> dict[str, Any]:
    return {"scores": [float(s) for s in out.scores], "details": list(out.details)}


def decode_output(payload: Any, n_samples: int | None = None) -> RewardOutput:
    """A response -> RewardOutput; an {"error": ...} response is raised as the server's message."""
    if not isinstance(payload, dict):
        raise RewardError(f"response: expected a JSON object, got {type(payload).__name__}")
    if "error" in payload:
        raise RewardError(str(payload["error"]))
    scores, details = payload.get("scores"), payload.get("details", [])
    if not isinstance(scores, list):
        raise RewardError(f"response.scores: expected a list, got {type(scores).__name__}")
    for i, score in enumerate(scores):
        if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
            raise RewardError(f"response.scores[{i}]: expected a finite number, got {score!r}")
    if n_samples is not None and len(scores) != n_samples:
        raise RewardError(f"response.scores: {len(scores)} scores for {n_samples} samples")
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
        raise RewardError("response.details: expected a list of objects")
    if details and len(details) != len(scores):
        raise RewardError(f"response.details: {len(details)} entries for {len(scores)} scores")
    return RewardOutput([float(s) for s in scores], details or [{} for _ in scores])
