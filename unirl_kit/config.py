"""Configs: dataclass schemas filled from YAML, CLI options and trailing `a.b=value` overrides.

Precedence (last wins): dataclass defaults < `--config FILE` < explicit CLI options < overrides.
Unknown keys and wrong types fail with one line naming the file/key and what was expected.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import platform
import sys
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, Union

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
        from unirl_kit.jsonl import read_text  # one reader: UTF-8 checked, BOM dropped, one-line errors

        if not Path(path).exists():
            raise InputError(f"{path}: config file not found")
        data = yaml.safe_load(read_text(Path(path)))
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
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return str(value) if isinstance(value, _Raw) else value
    if dataclasses.is_dataclass(tp):
        value = _parse_raw(value)  # `backbone={name: janus, model: DIR}` on the command line
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
            args = typing.get_args(tp)
            if not args:  # plugin options stay raw until the plugin's own annotations type them
                return dict(value)
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}  # e.g. shares per tag
    else:
        raise TypeError(f"config type {tp!r} at {where} is not supported")
    raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def translate_moved(cls: type | dict[str, str], data: dict[str, Any], where: str = "config",
                    warn: bool = True) -> dict[str, Any]:
    """`data` with the keys `cls.MOVED_KEYS` (or the mapping `cls`) lists as moved (`model` -> `backbone.model`)
    put where they now live, so old config files, overrides and saved config.yaml files keep loading; a key
    given both ways in one mapping fails naming the new one. `warn`: log a line per moved key (not when
    comparing a saved config.yaml)."""
    moved: dict[str, str] = (cls if isinstance(cls, dict) else getattr(cls, "MOVED_KEYS", None)) or {}
    if not moved or not isinstance(data, dict) or not any(k in data for k in moved):
        return data
    out = dict(data)
    for old, new in moved.items():
        if old not in out:
            continue
        head, *parents, leaf = new.split(".")
        value = out[old]
        if old == head:  # `backbone: NAME` (the old shape) beside `backbone: {name: ...}` (the new one)
            parsed = _parse_raw(value)
            if parsed is None or isinstance(parsed, dict):
                out[old] = parsed if isinstance(value, _Raw) else value
                continue
        del out[old]
        node = out
        for part in (head, *parents):
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise InputError(f"{where}: {old!r} moved to {new!r}, but {part!r} is given as {child!r}; give {new}")
            node[part] = child = dict(child)
            node = child
        if leaf in node:
            raise InputError(f"{where}: {old!r} moved to {new!r} and both are given; give only {new}")
        node[leaf] = value
        if warn:
            logging.getLogger("unirl_kit.config").warning("%s: %r moved to %r (read as that; please rename it)",
                                                          where, old, new)
    return out


def _parse_raw(value: Any) -> Any:
    """A command-line string as YAML reads it (other values as they are; unparsable: the string)."""
    if not isinstance(value, _Raw):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return str(value)


def _own_defaults(f: dataclasses.Field) -> dict[str, Any]:
    """The settings where a nested config's field default differs from its class's defaults (SFT's
    `run.out`, an inference stage's `backbone.dtype: auto`): a mapping given in part keeps them."""
    if f.default_factory is dataclasses.MISSING:
        return {}
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return {}
    own = {}
    for g in dataclasses.fields(default):
        if g.default is not dataclasses.MISSING:
            base = g.default
        elif g.default_factory is not dataclasses.MISSING:
            base = g.default_factory()
        else:
            continue
        if getattr(default, g.name) != base:
            own[g.name] = to_dict(getattr(default, g.name))
    return own


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a mapping, checking keys and types; moved keys are read where they live now."""
    data = translate_moved(cls, data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{where or 'settings'}: unknown key {unknown[0]!r}{hint}; known keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            value = data[name]
            if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]):
                value = {**_own_defaults(fields[name]), **value}
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field left out
        raise InputError(f"{where or 'settings'}: {exc}") from None


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
    if config_file is not None:  # each layer's moved keys are read before merging: the later layer still wins
        data = translate_moved(cls, read_yaml(config_file), str(config_file))
        from_dict(cls, data, str(config_file))  # the file alone must be valid: errors name it
    cli_set = translate_moved(cls, {k: v for k, v in (cli or {}).items() if v is not None}, "options")
    for key, value in cli_set.items():
        data = deep_merge(data, _nest(key, value))
    data = deep_merge(data, translate_moved(cls, parse_overrides(overrides), "command line"))
    return from_dict(cls, data, "")  # merged layers: an error names the key alone (`run.steps: ...`)


def _nest(key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    node: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


class Range(NamedTuple):
    """The values a numeric setting may take: bounds (None: unbounded), inclusive unless marked open, and
    what a boundary value means where that is not obvious (`why`, shown in the error)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""


COUNT = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
SHARE = Range(0, 1)
SEED = Range(0, 2**32 - 1, why="an unsigned 32-bit integer")
GUIDANCE = Range(0, why="1 = no guidance")

# Every numeric setting of every command's config, by field name (any config that has it) or by
# `Class.field` (that config only; it wins over the plain name). check_ranges holds a resolved config to
# it before any work, so a bad count or probability is one line naming the key, not a traceback (or a
# silent misbehaviour, as temperature -1 sampling greedily) minutes later. Every float is also finite.
RANGES: dict[str, Range] = {
    "seed": SEED, "train_seed": SEED, "eval_seed": SEED,
    "steps": COUNT, "batch_size": COUNT, "group_size": COUNT, "prompts_per_step": COUNT, "micro_batch": COUNT,
    "checkpoint_every": COUNT, "log_every": COUNT, "max_new_tokens": COUNT, "per_tag": COUNT,
    "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
    "grad_clip": Range(0, why="0 = no clipping"), "gen_weight": NON_NEGATIVE, "und_weight": NON_NEGATIVE,
    "temperature": Range(0, why="0 = greedy"), "top_k": COUNT, "top_p": Range(0, 1, low_open=True),
    "cfg_scale": GUIDANCE, "guidance_scale": GUIDANCE, "rank_timeout_s": POSITIVE,
    # training
    "OptimConfig.beta1": Range(0, 1, high_open=True), "OptimConfig.beta2": Range(0, 1, high_open=True),
    "OptimConfig.min_lr_ratio": SHARE,
    "LoraConfig.r": COUNT, "LoraConfig.alpha": POSITIVE, "LoraConfig.dropout": Range(0, 1, high_open=True),
    # a trainer's group (and the loop's) drawn greedily would be one image repeated; generate may be greedy
    **dict.fromkeys(("GRPOConfig.sampling.temperature", "SFTConfig.sampling.temperature",
                     "LoopConfig.sampling.temperature"),
                    Range(0, low_open=True, why="0 would draw a group's images all alike")),
    "RunConfig.keep_checkpoints": Range(0, why="0 = keep all"),
    "GRPOConfig.group_size": Range(2, why="a group of one has no baseline"),
    "GRPOConfig.num_iterations": COUNT, "GRPOConfig.epsilon": NON_NEGATIVE, "GRPOConfig.epsilon_high": NON_NEGATIVE,
    "GRPOConfig.beta": NON_NEGATIVE, "GRPOConfig.negative_weight": SHARE, "GRPOConfig.max_redraws": NON_NEGATIVE,
    "GRPOConfig.und_temperature": Range(0, low_open=True, why="answers are sampled; 0 would be greedy"),
    "GRPOConfig.und_max_new_tokens": COUNT,
    "SFTConfig.keep_top": Range(0, why="0 = off"), "SFTConfig.gumbel_tau": POSITIVE, "SFTConfig.dpo_beta": POSITIVE,
    "SFTConfig.focus": Range(0, why="0 = the plain NLL"),
    "SFTConfig.threshold": Range(),  # a reward value: any finite number
    # loop, prompts, render, eval
    "LoopConfig.rounds": NON_NEGATIVE, "LoopConfig.n_train": COUNT, "LoopConfig.n_eval": COUNT,
    "LoopConfig.eval_group_size": COUNT, "LoopConfig.understanding_per_tag": COUNT,
    "PromptsConfig.n": COUNT, "shares": NON_NEGATIVE, "train_shares": NON_NEGATIVE,
    "RenderConfig.images_per_prompt": COUNT, "RenderConfig.size": Range(16, 4096),
    "RuleOptions.threshold": SHARE, "RuleOptions.counting_threshold": SHARE, "RuleOptions.max_objects": COUNT,
    "RuleOptions.max_overlap": SHARE, "RuleOptions.position_threshold": NON_NEGATIVE,
    "PopeOptions.n_images": Range(0, why="0 = every generated image"),
    # pretrain
    "GateConfig.threshold": SHARE,
    "TokenizerConfig.image_size": COUNT, "TokenizerConfig.channel_multiplier": COUNT, "TokenizerConfig.base_channels": COUNT,
    "TokenizerConfig.latent_channels": COUNT, "TokenizerConfig.embed_dim": COUNT,
    "TokenizerConfig.codebook_size": Range(2), "TokenizerConfig.palette_weight": NON_NEGATIVE,
    "TokenizerConfig.object_weight": NON_NEGATIVE, "TokenizerConfig.commit_beta": NON_NEGATIVE,
    "TokenizerConfig.restart_every": COUNT, "VisionConfig.eval_images": COUNT,
    "LanguageModelConfig.gen_batch": COUNT, "LanguageModelConfig.und_batch": COUNT,
    "LanguageModelConfig.cfg_dropout": SHARE, "LanguageModelConfig.caption_share": SHARE,
    "LanguageModelConfig.caption_noise": SHARE,
    "LanguageModelConfig.canonical_margin": Range(-1, why="-1 = the encoder's own tokens"),
    "LanguageModelConfig.canonical_batches": COUNT, "LanguageModelConfig.gen_align": COUNT,
    "LanguageModelConfig.prompt_reading": NON_NEGATIVE, "LanguageModelConfig.text_hidden": COUNT,
    "LanguageModelConfig.text_layers": COUNT, "LanguageModelConfig.vision_hidden": COUNT,
    "LanguageModelConfig.vision_layers": COUNT,
}


def range_of(cls: type, name: str, root: type | None = None, key: str = "") -> Range | None:
    """A field's entry in RANGES: the top config's for its dotted key (`GRPOConfig.sampling.temperature`),
    else its class's own, else the plain field name's."""
    if root is not None and key and f"{root.__name__}.{key}" in RANGES:
        return RANGES[f"{root.__name__}.{key}"]
    return RANGES.get(f"{cls.__name__}.{name}", RANGES.get(name))


def check_ranges(cfg: Any, prefix: str = "", root: type | None = None) -> None:
    """Every number of a resolved config (nested configs, dict and list values too) finite and inside its
    RANGES entry, every `Literal` field one of its words (a config built in Python skips `from_dict`);
    the error names the dotted key as a user types it (`optim.lr`)."""
    root = root or type(cfg)
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{f.name}.", root)
        else:
            key = f"{prefix}{f.name}"
            check_value(key, value, range_of(type(cfg), f.name, root, key))
            check_choice(key, value, hints.get(f.name))


def check_choice(key: str, value: Any, tp: Any) -> None:
    """`value` one of the words of a `Literal` type (or None where the type is optional)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return
        tp = next((a for a in typing.get_args(tp) if typing.get_origin(a) is Literal), None)
    if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
        raise InputError(f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")


def check_value(key: str, value: Any, allowed: Range | None = None) -> None:
    """One setting: a float must be finite, a number inside `allowed`; dicts and lists item by item (a
    list's or a mapping's range holds for each of its numbers: `channel_multiplier`, `shares`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_value(f"{key}.{k}", v, allowed)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, allowed)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"{key}: must be a finite number, got {value!r}")
        if allowed is not None and not _inside(value, allowed):
            why = f" ({allowed.why})" if allowed.why else ""
            raise InputError(f"{key}: must be {_describe(allowed)}{why}, got {value!r}")


def _inside(value: float, allowed: Range) -> bool:
    """`value` within both bounds of `allowed`, each open or closed as the range says."""
    low, high = allowed.low, allowed.high
    above = low is None or (value > low if allowed.low_open else value >= low)
    below = high is None or (value < high if allowed.high_open else value <= high)
    return above and below


def _describe(allowed: Range) -> str:
    """`>= 1`, `> 0`, `in [0, 1)`: the range as the error states it."""
    low, high = allowed.low, allowed.high
    if low is not None and high is not None:
        return f"in {'(' if allowed.low_open else '['}{low}, {high}{')' if allowed.high_open else ']'}"
    if low is not None:
        return f"{'>' if allowed.low_open else '>='} {low}"
    return f"{'<' if allowed.high_open else '<='} {high}"


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
        check_value(f"{where}.{key}", typed[key])
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
# place: how long a run goes, where its folder now is, how it shows progress, where (report_to) and how
# often it logs or checkpoints, and memory layouts that compute the same run (FSDP, gradient
# checkpointing, micro-batches: equal up to float rounding). Every other setting defines the run and
# must equal its config.yaml.
RESUME_MAY_CHANGE: dict[str, tuple[str, ...]] = {
    "train": ("run.out", "run.steps", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every",
              "run.progress", "run.report_to", "run.tensorboard", "backbone.device", "backbone.fsdp",
              "backbone.gradient_checkpointing", "optim.micro_batch"),
    "loop": ("out", "rounds", "progress", "report_to", "batch_size", "backbone.device"),
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
               if not same_setting(saved.get(k, missing), now.get(k, missing)) and not _under(k, allowed)]
    if changed:
        shown = "; ".join(f"{k}: {_short(saved.get(k, '(absent)'))} -> {_short(now.get(k, '(absent)'))}"
                          for k in changed)
        raise InputError(f"{out_dir}: holds a run made with other settings ({shown}); resume with the settings "
                         f"of {saved_path}, or use another output folder")


def same_setting(old: Any, new: Any) -> bool:
    """Equal, or two spellings of one existing file or folder (`p.jsonl` from its folder, the absolute
    path from elsewhere): a resume from another working directory is the same run."""
    if old == new:
        return True
    if not (isinstance(old, str) and isinstance(new, str)) or not Path(new).exists():
        return False
    try:
        return Path(old).resolve() == Path(new).resolve() or Path(old).samefile(new)
    except OSError:  # `old` names nothing here (another machine, a moved folder)
        return False


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
