"""`self-qa`: the policy answers UniRL's question about its own image; the answer's graded credit is
the reward (the paper's self-play signal: no external judge, only the prompt's ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from unirl_kit.prompts.answers import grade_answer
from unirl_kit.prompts.qa import question_and_truth
from unirl_kit.rewards.base import RewardOutput, Sample
from unirl_kit.types import InputError


class SelfQAReward:
    """Greedy answer of the backbone to the prompt's question about the image, graded 0..1."""

    name: ClassVar[str] = "self-qa"
    needs_backbone: ClassVar[bool] = True

    def __init__(self, backbone: Any, batch_size: int = 32, max_new_tokens: int = 32) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise InputError(f"self-qa: batch_size and max_new_tokens must be >= 1, got {batch_size}, "
                             f"{max_new_tokens}")
        self.backbone = backbone
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def answers(self, samples: Sequence[Sample], questions: Sequence[str]) -> list[str]:
        """The backbone's greedy answers, in batches of `batch_size`."""
        out: list[str] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            got = self.backbone.answer([s.image for s in chunk], list(questions[start:start + len(chunk)]),
                                       max_new_tokens=self.max_new_tokens, greedy=True)
            if len(got) != len(chunk):
                raise RuntimeError(f"backbone returned {len(got)} answers for {len(chunk)} questions")
            out.extend(got)
        return out

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        qa = [question_and_truth(s.spec) for s in samples]
        answers = self.answers(samples, [q for q, _ in qa])
        scores, details = [], []
        for sample, (question, truth), answer in zip(samples, qa, answers, strict=True):
            grade = grade_answer(sample.spec, answer)
            detail: dict[str, Any] = {"question": question, "answer": answer, "truth": truth,
                                      "checks": dict(grade.checks), "correct": grade.correct}
            if not grade.correct:
                detail["reason"] = _reason(answer, grade.checks)
            scores.append(float(grade.score))
            details.append(detail)
        return RewardOutput(scores, details)


_PHRASES = {"object": "no {} named", "count": "wrong count", "color": "wrong colour{}",
            "relation": "wrong relation"}


def _reason(answer: str, checks: dict[str, bool]) -> str:
    """Why credit was lost, from the grader's check names ('object:bowl' -> 'no bowl named')."""
    if not answer.strip():
        return "empty answer"
    phrases = []
    for name, ok in checks.items():
        if not ok:
            kind, _, what = name.partition(":")
            template = _PHRASES.get(kind)
            if kind == "object":
                arg = what or "object"
            else:
                arg = f" of the {what}" if what else ""
            phrases.append(template.format(arg) if template else f"failed {name}")
    return "; ".join(phrases)
