"""unirl-kit: self-improvement of unified multimodal models (UniRL), with a faithful GenEval.

The Python API (see the README's "Python API"): `make_prompts`, `generate`, `evaluate_geneval`, `score`,
`train_grpo`, `train_sft`, `self_improve` (`unirl loop`), and the config classes they take. Everything is imported on first use,
so `import unirl_kit` stays light (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first access (PEP 562)
_LAZY: dict[str, str] = {
    "make_prompts": "unirl_kit.api",
    "generate": "unirl_kit.api",
    "evaluate_geneval": "unirl_kit.api",
    "score": "unirl_kit.api",
    "train_grpo": "unirl_kit.api",
    "train_sft": "unirl_kit.api",
    "self_improve": "unirl_kit.api",
    "resolve_config": "unirl_kit.api",
    "PromptsConfig": "unirl_kit.prompts.cmd",
    "BackboneConfig": "unirl_kit.backbones.config",
    "SamplingConfig": "unirl_kit.backbones.config",
    "GenerateConfig": "unirl_kit.generation.run",
    "GenevalConfig": "unirl_kit.eval.geneval.runner",
    "ScoreConfig": "unirl_kit.scoring.run",
    "GRPOConfig": "unirl_kit.training.config",
    "SFTConfig": "unirl_kit.training.config",
    "LoopConfig": "unirl_kit.loop.config",
    "InputError": "unirl_kit.types",
}

__all__ = [
    "BackboneConfig", "GRPOConfig", "GenerateConfig", "GenevalConfig", "InputError", "LoopConfig", "PromptsConfig", "SFTConfig",
    "SamplingConfig", "ScoreConfig", "__version__", "evaluate_geneval", "generate", "make_prompts", "resolve_config", "score", "self_improve",
    "train_grpo", "train_sft",
]

if TYPE_CHECKING:
    from unirl_kit.api import (
        evaluate_geneval,
        generate,
        make_prompts,
        resolve_config,
        score,
        self_improve,
        train_grpo,
        train_sft,
    )
    from unirl_kit.backbones.config import BackboneConfig, SamplingConfig
    from unirl_kit.eval.geneval.runner import GenevalConfig
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.prompts.cmd import PromptsConfig
    from unirl_kit.scoring.run import ScoreConfig
    from unirl_kit.training.config import GRPOConfig, SFTConfig
    from unirl_kit.types import InputError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unirl_kit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
