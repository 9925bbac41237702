"""Reading and writing GenEval metadata lines, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unirl_kit.prompts.sources import iter_prompt_rows
from unirl_kit.types import RELATIONS, InputError, PromptSpec, Requirement

_KNOWN = {"tag", "prompt", "include", "exclude", "question", "answer"}


def _requirement(obj: Any, where: str, index: int, allow_position: bool) -> Requirement:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected an object like {{\"class\": ..., \"count\": ...}}, got {obj!r}")
    cls, count = obj.get("class"), obj.get("count", 1)
    if not isinstance(cls, str) or not cls:
        raise InputError(f"{where}: 'class' must be a non-empty string, got {cls!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"{where}: 'count' must be a positive integer, got {count!r}")
    color = obj.get("color")
    if color is not None and not isinstance(color, str):
        raise InputError(f"{where}: 'color' must be a string, got {color!r}")
    position = obj.get("position")
    if position is not None:
        if not allow_position:
            raise InputError(f"{where}: 'position' is only allowed in 'include'")
        ok = (isinstance(position, (list, tuple)) and len(position) == 2 and position[0] in RELATIONS
              and isinstance(position[1], int) and 0 <= position[1] < index)
        if not ok:
            raise InputError(
                f"{where}: 'position' must be [relation, index of an earlier include entry] with relation "
                f"in {list(RELATIONS)}, got {position!r}"
            )
        position = (position[0], position[1])
    unknown = set(obj) - {"class", "count", "color", "position"}
    if unknown:
        raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r} (expected class, count, color, position)")
    return Requirement(cls, count, color, position)


def parse_spec(obj: Any, where: str) -> PromptSpec:
    """A metadata object -> PromptSpec; `where` is "file:line" for error messages."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("tag", "prompt"):
        if not isinstance(obj.get(key), str):
            raise InputError(f"{where}: field {key!r} must be a string, got {obj.get(key)!r}")
    include = obj.get("include")
    if not isinstance(include, list) or not include:
        raise InputError(f"{where}: field 'include' must be a non-empty list")
    exclude = obj.get("exclude", [])
    if not isinstance(exclude, list):
        raise InputError(f"{where}: field 'exclude' must be a list")
    for key in ("question", "answer"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise InputError(f"{where}: field {key!r} must be a string")
    return PromptSpec(
        tag=obj["tag"],
        prompt=obj["prompt"],
        include=tuple(_requirement(r, f"{where} include[{i}]", i, True) for i, r in enumerate(include)),
        exclude=tuple(_requirement(r, f"{where} exclude[{i}]", 0, False) for i, r in enumerate(exclude)),
        question=obj.get("question"),
        answer=obj.get("answer"),
        extra=tuple((k, v) for k, v in obj.items() if k not in _KNOWN),
    )


def read_prompts(path: Path) -> list[PromptSpec]:
    """All metadata rows of a prompts file: JSONL, parquet or a `datasets` folder (`prompts.sources`)."""
    return [parse_spec(obj, where) for where, obj in iter_prompt_rows(Path(path))]


def write_prompts(specs: Iterable[PromptSpec], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for spec in specs:
            fh.write(json.dumps(spec.to_json()) + "\n")
    tmp.replace(path)
