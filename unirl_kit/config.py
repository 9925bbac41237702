"""Configs: dataclass schemas filled from YAML, CLI options and trailing `a.b=value` overrides.

Precedence (last wins): dataclass defaults < `--config FILE` < explicit CLI options < overrides.
Unknown keys and wrong types fail with one line naming the file/key and what was expected.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import platform
import sys
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from unirl_kit.types import InputError

T = TypeVar("T")


class _Raw(str):
    """An override's value as typed on the command line, parsed once its target type is known."""


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> nested dict of `_Raw` strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise InputError(f"override {item!r}: expected key=value or a.b=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part!r} was already given a value")
        node[leaf] = _Raw(value)
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return yaml.safe_load(value) if isinstance(value, _Raw) else value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if isinstance(value, _Raw) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise InputError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return str(value) if isinstance(value, _Raw) else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp in (str, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise InputError(f"{where}: expected a string, got {value!r}")
    if isinstance(value, _Raw):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"{where}: cannot parse {str(value)!r} as {_type_name(tp)}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp)[:1] or (Any,)
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
            return items if origin is list or tp is list else tuple(items)
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)  # plugin options stay raw until the plugin's own annotations type them
    else:
        raise TypeError(f"config type {tp!r} at {where} is not supported")
    raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{where}: unknown key {unknown[0]!r}{hint}; known keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field left out
        raise InputError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (Paths as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, _Raw):
        return yaml.safe_load(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(
    cls: type[T],
    config_file: Path | None = None,
    cli: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Resolve a command's config: defaults < file < CLI options < `key=value` overrides."""
    data: dict[str, Any] = {}
    if config_file is not None:
        data = read_yaml(config_file)
        from_dict(cls, data, str(config_file))  # the file alone must be valid: errors name it
    cli_set = {k: v for k, v in (cli or {}).items() if v is not None}
    for key, value in cli_set.items():
        data = deep_merge(data, _nest(key, value))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data, "command line")


def _nest(key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    node: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


def check_call_options(factory: Any, options: dict[str, Any], where: str) -> dict[str, Any]:
    """A plugin's options checked against its signature and typed by its annotations.

    Unknown names fail with the accepted ones; command-line strings become the annotated type
    (so `detector_options.model=0001` stays the string "0001" when `model: str`).
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {k: to_dict(v) for k, v in options.items()}
    params = sig.parameters
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # unresolvable annotations: fall back to YAML parsing of raw strings
        hints = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    typed = {}
    for key, value in options.items():
        if key not in accepted and not open_ended:
            import difflib

            close = difflib.get_close_matches(key, accepted, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{where}: unknown option {key!r}{guess}; accepted: {', '.join(accepted) or 'none'}")
        hint = hints.get(key, Any)
        try:
            typed[key] = _coerce(value, hint, f"{where}.{key}")
        except TypeError:  # an annotation the config system does not model
            typed[key] = to_dict(value)
    return typed


def library_versions() -> dict[str, str]:
    """Versions recorded beside every run's outputs (read from metadata: no torch import)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("unirl-kit", "torch", "transformers", "open_clip_torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_run_info(out_dir: Path, config: Any, command: str, prefix: str = "") -> None:
    """Save the resolved config and library versions beside a run's outputs.

    A run whose output is a folder writes `config.yaml` and `versions.json` into it; one whose
    output is a file `X.jsonl` writes `X.config.yaml` and `X.versions.json` beside it (prefix "X.").
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_settings(config, command)
    from unirl_kit.jsonl import write_atomic  # other ranks may be reading config.yaml right now

    write_atomic(out_dir / f"{prefix}config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_atomic(out_dir / f"{prefix}versions.json", json.dumps(library_versions(), indent=2) + "\n")


def run_settings(config: Any, command: str) -> dict[str, Any]:
    """What a run's config.yaml holds: the command and every resolved setting."""
    return {"command": command, **to_dict(config)}


# The settings a resume may change (`unirl train grpo|sft --resume`, a rerun of `unirl loop`), in one
# place: how long a run goes, where its folder now is, how it shows progress and how often it logs or
# checkpoints, and memory layouts that compute the same run (FSDP, gradient checkpointing, micro-batches:
# equal up to float rounding). Every other setting defines the run and must equal its config.yaml.
RESUME_MAY_CHANGE: dict[str, tuple[str, ...]] = {
    "train": ("run.out", "run.steps", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every",
              "run.progress", "run.tensorboard", "backbone.device", "backbone.fsdp",
              "backbone.gradient_checkpointing", "optim.micro_batch"),
    "loop": ("out", "rounds", "progress", "batch_size", "backbone.device"),
}


def check_same_run(out_dir: Path, config: Any, command: str, unresolved: tuple[str, ...] = ()) -> None:
    """Refuse to continue the run in `out_dir` with run-defining settings other than its config.yaml's
    (its results would mix two runs and config.yaml would name settings that never ran); the error names
    every differing key. `unresolved` keys are not known yet (the caller checks again once they are)."""
    saved_path = Path(out_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flat(read_yaml(saved_path))
    now = _flat(yaml.safe_load(yaml.safe_dump(run_settings(config, command), sort_keys=False)))  # as saved
    allowed = (*RESUME_MAY_CHANGE[command.split()[0]], *unresolved)
    missing = object()
    changed = [k for k in sorted(saved.keys() | now.keys())
               if saved.get(k, missing) != now.get(k, missing) and not _under(k, allowed)]
    if changed:
        shown = "; ".join(f"{k}: {_short(saved.get(k, '(absent)'))} -> {_short(now.get(k, '(absent)'))}"
                          for k in changed)
        raise InputError(f"{out_dir}: holds a run made with other settings ({shown}); resume with the settings "
                         f"of {saved_path}, or use another output folder")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`), so a difference is named by the key a user types."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty one adds no key: {} and {a: 1} differ by `a` alone
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of `prefixes` or inside one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _short(value: Any, limit: int = 60) -> str:
    """A value's repr cut to `limit` characters: the error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
