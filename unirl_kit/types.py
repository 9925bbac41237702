"""The data types every stage shares: one definition each, imported everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# GenEval's colour vocabulary, in the reference implementation's order.
GENEVAL_COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)
GENEVAL_TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


class InputError(ValueError):
    """Bad user input: the message is one line that names the file/field and the fix."""


def first_line(exc: BaseException) -> str:
    """An exception's text cut to its first line, for an InputError's message (safetensors and torch
    errors run over several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, ...); the message says what and where the last good checkpoint is."""


@dataclass(frozen=True)
class Requirement:
    """One `include`/`exclude` entry of a GenEval metadata line."""

    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.cls, "count": self.count}
        if self.color is not None:
            out["color"] = self.color
        if self.position is not None:
            out["position"] = [self.position[0], self.position[1]]
        return out


@dataclass(frozen=True)
class PromptSpec:
    """A GenEval metadata line plus UniRL's question/answer; `extra` keeps unknown keys verbatim."""

    tag: str
    prompt: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = ()
    question: str | None = None
    answer: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Key order follows the official file: tag, include, exclude, prompt, then ours."""
        out: dict[str, Any] = {"tag": self.tag, "include": [r.to_json() for r in self.include]}
        if self.exclude:
            out["exclude"] = [r.to_json() for r in self.exclude]
        out["prompt"] = self.prompt
        if self.question is not None:
            out["question"] = self.question
        if self.answer is not None:
            out["answer"] = self.answer
        out.update(dict(self.extra))
        return out


@dataclass
class Detection:
    """One detected object. Box is [x1, y1, x2, y2] in pixels, x2/y2 exclusive (mmdet's +1)."""

    cls: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None  # HxW bool, same size as the image
    color: str | None = None

    def box5(self) -> list[float]:
        """The reference `details` entry: [x1, y1, x2, y2, score]."""
        return [float(v) for v in self.box] + [float(self.score)]


@dataclass
class Verdict:
    """GenEval's per-image judgement."""

    correct: bool
    reason: str
    details: dict[str, list[list[float]]] = field(default_factory=dict)
