"""The reward contract: a batch of samples in, one finite float per sample (plus details) out.

Every reward, built in or third-party, is a callable registered in the `rewards` group whose
constructor takes its options as keyword arguments (typed by their annotations, so `key=value`
overrides work) and, when it needs one, the policy backbone as `backbone=`; or a plain function in TRL's
shape, `fn(prompts, images, **kwargs) -> list[float]`, adapted by `FunctionReward`. A reward is named by
its registered name or given as a lazy "module:object" target. `compose` weights them;
a reward that raises or returns a non-finite value stops the batch with an error naming the reward
and the sample: never a silent 0.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from unirl_kit.types import InputError, PromptSpec


@dataclass
class Sample:
    """One generated image with what a reward may need: its prompt metadata (with UniRL's question and
    answer), the image, its token ids, and where it came from."""

    spec: PromptSpec
    image: Any  # PIL.Image.Image
    tokens: Any = None  # torch.LongTensor of image token ids, when the generator recorded them
    prompt_index: int = 0
    image_index: int = 0
    path: str | None = None  # the PNG, relative to the samples folder

    @property
    def label(self) -> str:
        return self.path or f"prompt {self.prompt_index} image {self.image_index}"


@dataclass
class RewardOutput:
    scores: list[float]
    details: list[dict[str, Any]] = field(default_factory=list)


class Reward(Protocol):
    name: ClassVar[str]
    needs_backbone: ClassVar[bool]  # the constructor takes backbone=

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput: ...


class RewardError(RuntimeError):
    """A reward failed on a sample; the message names both."""


def parse_reward_spec(text: str) -> tuple[str, float]:
    """'geneval:0.5' -> ('geneval', 0.5); 'self-qa' -> ('self-qa', 1.0); a lazy target
    'my_pkg.rewards:fn' -> ('my_pkg.rewards:fn', 1.0), 'my_pkg.rewards:fn:0.5' -> (..., 0.5). A NaN or
    infinite weight is refused: it would turn every total reward into NaN (or inf) and every advantage with it."""
    from unirl_kit.registry import is_target

    text = text.strip()
    name, sep, weight = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        value = float(weight)
    except ValueError:
        if is_target(text):
            return text, 1.0
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"--reward {text!r}: expected NAME, NAME:WEIGHT (a finite number as weight) "
                         "or module:function[:WEIGHT]")
    return name.strip(), value


def check_output(name: str, out: Any, samples: Sequence[Sample]) -> RewardOutput:
    """The contract, enforced: one finite float per sample, details (if any) one dict per sample."""
    if not isinstance(out, RewardOutput):
        raise RewardError(f"reward {name!r} returned {type(out).__name__}, expected RewardOutput")
    if len(out.scores) != len(samples):
        raise RewardError(f"reward {name!r} returned {len(out.scores)} scores for {len(samples)} samples")
    for score, sample in zip(out.scores, samples, strict=True):
        if not isinstance(score, int | float) or not math.isfinite(score):
            raise RewardError(f"reward {name!r} gave {score!r} for {sample.label} ({sample.spec.prompt!r}); "
                              "a reward must be a finite number")
    details = out.details or [{} for _ in samples]
    if len(details) != len(samples):
        raise RewardError(f"reward {name!r} returned {len(details)} details for {len(samples)} samples")
    return RewardOutput([float(s) for s in out.scores], details)


def call_reward(name: str, reward: Reward, samples: Sequence[Sample]) -> RewardOutput:
    """Run one reward on a batch; any exception becomes a RewardError naming the reward and batch."""
    try:
        out = reward(samples)
    except (RewardError, InputError):
        raise
    except Exception as exc:
        where = f"{samples[0].label} .. {samples[-1].label}" if samples else "an empty batch"
        raise RewardError(f"reward {name!r} failed on {where}: {type(exc).__name__}: {exc}") from exc
    return check_output(name, out, samples)


FUNCTION_ARGS = ("prompts", "images", "metadata", "samples")


def is_function_reward(obj: Any) -> bool:
    """A plain-function reward (TRL's shape): not a class, and its signature names `prompts` or `images` (a
    class, or a factory taking only options, is built with its options and called on samples)."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "prompts" in params or "images" in params


class FunctionReward:
    """Adapts `fn(prompts, images, **kwargs) -> list[float]` to the reward protocol.

    Called with keywords: `prompts` (the prompt strings), `images` (PIL images), `metadata` (each prompt
    spec as a dict: tag, include, exclude, prompt, question, answer), `samples` (the `Sample`s: tokens,
    indices, paths), then the reward's options (`reward_options.NAME.key=value`) and `backbone=` when
    `fn.needs_backbone` is true. A function without `**kwargs` gets only the names it declares. It returns
    one number per sample (a list, tuple or array), or a `RewardOutput` for details.
    """

    def __init__(self, name: str, fn: Any, options: dict[str, Any]) -> None:
        self.name, self.fn, self.options = name, fn, dict(options)
        self.needs_backbone = bool(getattr(fn, "needs_backbone", False))
        params = inspect.signature(fn).parameters
        self._accepts = None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else set(params)

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        kwargs: dict[str, Any] = {
            "prompts": [s.spec.prompt for s in samples], "images": [s.image for s in samples],
            "metadata": [s.spec.to_json() for s in samples], "samples": list(samples), **self.options}
        if self._accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        out = self.fn(**kwargs)
        if isinstance(out, RewardOutput):
            return out
        if isinstance(out, str | bytes | dict) or not hasattr(out, "__len__"):
            raise RewardError(f"reward {self.name!r} returned {type(out).__name__}, expected a list of "
                              f"{len(samples)} floats (one per sample)")
        return RewardOutput([_as_float(x) for x in out])


def _as_float(x: Any) -> Any:
    """numpy and torch scalars become floats; anything else is left for `check_output` to refuse."""
    if isinstance(x, str | bytes | bool) or x is None:
        return x
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


class ComposedReward:
    """sum_i w_i * reward_i, with every reward's own score and details kept per sample."""

    def __init__(self, parts: Sequence[tuple[str, float, Reward]]) -> None:
        if not parts:
            raise InputError("no reward given; pass --reward NAME[:WEIGHT] (see `unirl plugins`)")
        self.parts = list(parts)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.parts]

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        """The weighted total per sample as `scores`, and as `details` one record per sample,
        {'rewards': {name: score}, 'details': {name: that reward's details}}: the shape of every reward."""
        totals = [0.0] * len(samples)
        records: list[dict[str, Any]] = [{"rewards": {}, "details": {}} for _ in samples]
        for name, weight, reward in self.parts:
            out = call_reward(name, reward, samples)
            for i, (score, detail) in enumerate(zip(out.scores, out.details, strict=True)):
                totals[i] += weight * score
                records[i]["rewards"][name] = score
                records[i]["details"][name] = detail
        return RewardOutput(totals, records)


JUDGES = ("policy", "reference")


def judge_backbone(backbone: Any, judge: str, name: str) -> Any:
    """The model a self-judge asks: the live policy (`policy`, UniRL's setting: it drifts as it trains), or a
    frozen copy of the weights it was built with (`reference`: the starting model, a judge the policy cannot
    move). The copy costs one more set of weights in memory."""
    if judge not in JUDGES:
        raise InputError(f"{name}: judge must be one of {', '.join(JUDGES)}, got {judge!r}")
    if judge == "policy":
        return backbone
    import copy

    frozen = copy.deepcopy(backbone)
    frozen.model.eval()
    for p in frozen.model.parameters():
        p.requires_grad_(False)
    return frozen


def build_rewards(specs: Sequence[str], options: dict[str, dict[str, Any]] | None = None,
                  backbone: Any = None) -> ComposedReward:
    """`--reward` specs (NAME[:WEIGHT]) -> ComposedReward; `options[NAME]` are that reward's kwargs."""
    from unirl_kit.registry import registry

    options = options or {}
    reg = registry("rewards")
    parts = []
    seen: set[str] = set()
    for spec in specs:
        name, weight = parse_reward_spec(spec)
        if name in seen:
            raise InputError(f"--reward {name!r} given twice; give each reward once, with its weight")
        seen.add(name)
        factory = reg.get(name)  # unknown names: "did you mean"
        kwargs = dict(options.get(name, {}))
        if getattr(factory, "needs_backbone", False):
            if backbone is None:
                raise InputError(f"reward {name!r} needs a backbone (the model that answers); give --backbone")
            kwargs["backbone"] = backbone
        if is_function_reward(factory):
            from unirl_kit.config import check_call_options

            typed = check_call_options(factory, kwargs, where=f"rewards.{name}")
            parts.append((name, weight, FunctionReward(name, factory, typed)))
        else:
            parts.append((name, weight, reg.build(name, **kwargs)))
    unknown = set(options) - seen
    if unknown:
        raise InputError(f"reward_options: {sorted(unknown)[0]!r} is not among the rewards given ({', '.join(seen)})")
    return ComposedReward(parts)
