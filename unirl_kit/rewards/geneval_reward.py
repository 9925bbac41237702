"""`geneval` / `geneval-partial`: GenEval's own verdict as a reward, judged exactly as `eval geneval`
judges (same detector and colour classifier plugins, same rules), so training optimises the metric
that is reported. `partial` gives the share of include/exclude requirements met instead of 0/1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from unirl_kit.config import check_ranges
from unirl_kit.eval.geneval.rules import RuleOptions, keep_detections, requirement_checks, verdict_from_checks
from unirl_kit.eval.geneval.runner import GenevalConfig, build_judges
from unirl_kit.rewards.base import RewardOutput, Sample
from unirl_kit.types import InputError, PromptSpec


class GenevalReward:
    """1 if GenEval's verdict is correct else 0; with `partial`, the share of requirements met.

    `partial`: None means the class default (False here, True for `geneval-partial`). The rule
    options are those of `eval geneval`'s `rules.*` (max_overlap is the NMS IoU; 1.0 turns NMS off).
    """

    name: ClassVar[str] = "geneval"
    needs_backbone: ClassVar[bool] = False
    PARTIAL: ClassVar[bool] = False

    def __init__(
        self, detector: str = "shapes", detector_options: dict | None = None, color_classifier: str = "auto",
        color_options: dict | None = None, partial: bool | None = None, threshold: float = 0.3,
        counting_threshold: float = 0.9, max_objects: int = 16, max_overlap: float = 1.0,
        position_threshold: float = 0.1, batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.rules = RuleOptions(threshold, counting_threshold, max_objects, max_overlap, position_threshold)
        check_ranges(self.rules, f"rewards.{self.name}.")  # the same bounds as `eval geneval` rules.*
        cfg = GenevalConfig(detector=detector, detector_options=dict(detector_options or {}),
                            color_classifier=color_classifier, color_options=dict(color_options or {}))
        self.detector, self.colors = build_judges(cfg)
        self.detector_name = detector
        self.partial = self.PARTIAL if partial is None else bool(partial)
        self.batch_size = batch_size
        self._known: set[str] = set()  # prompts whose vocabulary was checked

    def _check_vocabulary(self, spec: PromptSpec) -> None:
        """A class or colour the judges do not know would score 0 forever: fail instead, naming it."""
        if spec.prompt in self._known:
            return
        for req in (*spec.include, *spec.exclude):
            if self.detector.classes is not None and req.cls not in self.detector.classes:
                raise InputError(f"prompt {spec.prompt!r}: class {req.cls!r} is unknown to detector "
                                 f"{self.detector_name!r}; use a detector trained on it")
            if req.color is not None and req.color not in self.colors.colors:
                raise InputError(f"prompt {spec.prompt!r}: colour {req.color!r} is unknown to the colour "
                                 f"classifier (knows {', '.join(self.colors.colors)})")
        self._known.add(spec.prompt)

    def judge(self, sample: Sample, detections: list) -> tuple[float, dict[str, Any]]:
        """What `verdict_for` decides (keep, then the rules), with the per-requirement checks kept."""
        spec, image = sample.spec, sample.image
        kept = keep_detections(detections, spec.tag, self.rules)
        checks = requirement_checks(spec, kept, lambda found, cls: self.colors.classify(image, found, cls),
                                    self.rules)
        verdict = verdict_from_checks(checks, kept)
        detail: dict[str, Any] = {"correct": verdict.correct, "reason": verdict.reason}
        if not self.partial:
            return float(verdict.correct), detail
        passed = sum(c.passed for c in checks)
        detail |= {"checks_passed": passed, "checks_total": len(checks)}
        return (passed / len(checks) if checks else float(verdict.correct)), detail

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        for sample in samples:
            self._check_vocabulary(sample.spec)
        scores, details = [], []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            dets = self.detector.detect([s.image for s in chunk], [s.path or s.label for s in chunk])
            if len(dets) != len(chunk):
                raise RuntimeError(f"detector {self.detector_name!r} returned {len(dets)} results for "
                                   f"{len(chunk)} images")
            for sample, found in zip(chunk, dets, strict=True):
                score, detail = self.judge(sample, found)
                scores.append(score)
                details.append(detail)
        return RewardOutput(scores, details)


class GenevalPartialReward(GenevalReward):
    """GenEval with partial credit: the share of include/exclude requirements the image meets."""

    name: ClassVar[str] = "geneval-partial"
    PARTIAL: ClassVar[bool] = True
