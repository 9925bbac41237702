"""The Python API: one function per command, each a thin wrapper over the runner the CLI calls.

Every function takes its command's config in any of three forms, resolved exactly as the CLI resolves
it (defaults < YAML file < keyword arguments < `key=value` overrides, via `unirl_kit.config.load_config`):

- a config object (`GenerateConfig(...)`), optionally changed by keyword arguments / overrides;
- a YAML path (`"configs/grpo/tiny_shapes.yaml"`), the same file `--config` takes;
- nothing: the command's defaults.

Keyword arguments name top-level fields (`group_size=1`); a nested field takes a dict, merged into the
rest (`backbone={"model": "DIR"}`, `rules={"threshold": 0.4}`), or an override string
(`overrides=["backbone.model=DIR", "run.steps=3"]`). A keyword set to None is left out (the file's or the
default value stands), as an unset CLI option is; use an override (`"sampling.cfg_scale=null"`) to set a
field to None.

Each returns what the command prints as JSON (a summary dict). Bad input raises
`unirl_kit.types.InputError`, whose message is the CLI's one-line error. Heavy imports (torch) happen on
the first call, not on `import unirl_kit`.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from unirl_kit.eval.geneval.runner import GenevalConfig
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.prompts.cmd import PromptsConfig
    from unirl_kit.scoring.run import ScoreConfig
    from unirl_kit.training.config import GRPOConfig, SFTConfig

__all__ = ["evaluate_geneval", "generate", "make_prompts", "resolve_config", "score", "self_improve", "train_grpo",
           "train_sft"]

T = TypeVar("T")
ConfigLike = T | str | PathLike | None  # a config object, a YAML path, or None: the defaults


def _plain(value: Any) -> Any:
    """Paths as strings (config fields are `str`), recursively through dicts and lists."""
    if isinstance(value, PathLike):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _backbone_settings(value: str | dict) -> dict[str, Any]:
    """`backbone=` given as the plugin's name or as a mapping of `backbone.*` settings."""
    return {"name": value} if isinstance(value, str) else dict(value)


def resolve_config(cls: type[T], config: ConfigLike[T] = None, overrides: list[str] | None = None,
                   **kwargs: Any) -> T:
    """`cls` from a config object, a YAML path or nothing, then keyword arguments, then `key=value`
    overrides: the CLI's resolution order and checks (`load_config`)."""
    from unirl_kit.config import deep_merge, from_dict, load_config, parse_overrides, to_dict, translate_moved

    cli = _plain(kwargs)
    if isinstance(config, cls):
        if not cli and not overrides:
            return config
        data = to_dict(config)  # each layer's moved keys (`model=` -> backbone.model) are read before merging
        for key, value in translate_moved(cls, {k: v for k, v in cli.items() if v is not None}, "keywords").items():
            data = deep_merge(data, {key: value})
        over = translate_moved(cls, parse_overrides(overrides), "overrides")
        return from_dict(cls, deep_merge(data, over), cls.__name__)
    if config is not None and not isinstance(config, (str, PathLike)):
        raise TypeError(f"config: expected a {cls.__name__}, a YAML path or None, got {type(config).__name__}")
    return load_config(cls, Path(config) if config is not None else None, cli, list(overrides or []))


def make_prompts(config: ConfigLike[PromptsConfig] = None, *, overrides: list[str] | None = None,
                 **kwargs: Any) -> list[Any]:
    """`unirl prompts`: write GenEval-style metadata lines (with UniRL's question and answer) to `out`;
    returns the `PromptSpec`s. E.g. `make_prompts(world="shapes", n=12, seed=0, out="p.jsonl")`."""
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    return run_prompts(resolve_config(PromptsConfig, config, overrides, **kwargs))


def generate(config: ConfigLike[GenerateConfig] = None, *, overrides: list[str] | None = None,
             backbone: Any = None, **kwargs: Any) -> dict[str, Any]:
    """`unirl generate`: `group_size` images per prompt of `prompts` into `out` (GenEval layout);
    resumable. `backbone` may be an already built backbone object (reused across calls); a string names
    the plugin (`"tiny-shapes"`, `"janus"`, `"showo"`) as `backbone.name` does, a dict gives `backbone.*`
    settings (`{"name": "janus", "model": "DIR"}`)."""
    from unirl_kit.generation.run import GenerateConfig, run_generate

    if isinstance(backbone, (str, dict)):  # a name (as `--backbone NAME`) or backbone.* settings
        kwargs["backbone"], backbone = _backbone_settings(backbone), None
    return run_generate(resolve_config(GenerateConfig, config, overrides, **kwargs), backbone)


def evaluate_geneval(config: ConfigLike[GenevalConfig] = None, *, overrides: list[str] | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """`unirl eval geneval`: judge the images of `images_dir` (GenEval layout) into `out`
    (`results.jsonl`, `summary.json`); returns the summary (overall score and per tag)."""
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval

    return run_geneval(resolve_config(GenevalConfig, config, overrides, **kwargs))


def score(config: ConfigLike[ScoreConfig] = None, *, overrides: list[str] | None = None,
          backbone: Any = None, **kwargs: Any) -> dict[str, Any]:
    """`unirl score`: the composed rewards (`rewards=["self-qa", "name:0.5"]`) of every image of
    `samples_dir`, written to `scores.jsonl`; returns the summary. `backbone` as in `generate`."""
    from unirl_kit.scoring.run import ScoreConfig, run_score

    if isinstance(backbone, (str, dict)):  # a name (as `--backbone NAME`) or backbone.* settings
        kwargs["backbone"], backbone = _backbone_settings(backbone), None
    return run_score(resolve_config(ScoreConfig, config, overrides, **kwargs), backbone)


def train_grpo(config: ConfigLike[GRPOConfig] = None, *, resume: bool = False,
               overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """`unirl train grpo`: UniRL-GRPO for `run.steps` steps (`resume=True`: from the last checkpoint
    in `run.out`); returns the training summary. E.g.
    `train_grpo("configs/grpo/tiny_shapes.yaml", prompts="p.jsonl", overrides=["run.steps=3"])`."""
    from unirl_kit.training.config import GRPOConfig
    from unirl_kit.training.grpo import run_grpo

    return run_grpo(resolve_config(GRPOConfig, config, overrides, **kwargs), resume=resume)


def train_sft(config: ConfigLike[SFTConfig] = None, *, resume: bool = False,
              overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """`unirl train sft`: UniRL-SFT in its `mode` (und, e2e, gen-rs, distill, dpo); as `train_grpo`."""
    from unirl_kit.training.config import SFTConfig
    from unirl_kit.training.sft import run_sft

    return run_sft(resolve_config(SFTConfig, config, overrides, **kwargs), resume=resume)


def self_improve(config: ConfigLike[LoopConfig] = None, *, overrides: list[str] | None = None,
         **kwargs: Any) -> dict[str, Any]:
    """`unirl loop`: self-improvement rounds (prompts, generate, judge, train, evaluate) into `out`,
    with `report.md`; rerun to resume. Returns the report dict."""
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    return run_loop(resolve_config(LoopConfig, config, overrides, **kwargs))
