"""Built-in rewards: graded self-QA, GenEval (0/1 and partial), CLIPScore, and their composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from unirl_kit.eval.geneval.rules import (
    RuleOptions,
    evaluate,
    keep_detections,
    requirement_checks,
    verdict_from_checks,
)
from unirl_kit.eval.geneval.runner import verdict_for
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.registry import UnknownPluginError, registry
from unirl_kit.rewards.base import ComposedReward, RewardError, RewardOutput, Sample, build_rewards
from unirl_kit.types import GENEVAL_TAGS, Detection, InputError, PromptSpec, Requirement
from unirl_kit.worlds.shapes.render import ERRORS, error_applies, render_scene

FOUR_BOWLS = PromptSpec("counting", "a photo of four bowls", (Requirement("bowl", 4),), (Requirement("bowl", 5),))
BLANK = Image.new("RGB", (8, 8))


class CannedBackbone:
    """Answers from a list, in order; records every call so batching can be checked."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[dict] = []

    def answer(self, images: list, questions: list[str], max_new_tokens: int = 32, greedy: bool = True) -> list[str]:
        self.calls.append({"n": len(images), "questions": list(questions), "max_new_tokens": max_new_tokens,
                           "greedy": greedy})
        out, self.answers = self.answers[:len(images)], self.answers[len(images):]
        return out


def _renders(specs: list[PromptSpec], seed: int, error: str | None = None, size: int = 64) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(spec, render_scene(spec, rng, size, error=error)[0], prompt_index=i)
            for i, spec in enumerate(specs)]


def _specs(tags: tuple[str, ...], per_tag: int, seed: int) -> list[PromptSpec]:
    rng, world = np.random.default_rng(seed), get_world("shapes")
    return [sample_prompt(tag, world, rng) for tag in tags for _ in range(per_tag)]


# ---- self-qa -------------------------------------------------------------------------------------

def test_self_qa_gives_unirls_graded_credit():
    backbone = CannedBackbone(["two chairs", "three bowls", "Four bowls.", "", "4 bowls"])
    reward = registry("rewards").build("self-qa", backbone=backbone, batch_size=2, max_new_tokens=7)
    out = reward([Sample(FOUR_BOWLS, BLANK, prompt_index=i) for i in range(5)])
    assert out.scores == [0.0, 0.5, 1.0, 0.0, 1.0]
    first = out.details[0]
    assert first["question"] == "How many items in this image?"  # derived: the spec has none
    assert first["truth"] == "four bowls" and first["answer"] == "two chairs"
    assert first["checks"] == {"object": False, "count": False} and first["correct"] is False
    assert first["reason"] == "no object named; wrong count"
    assert out.details[1]["reason"] == "wrong count"
    assert out.details[2]["correct"] is True and "reason" not in out.details[2]
    assert out.details[3]["reason"] == "empty answer"
    assert [c["n"] for c in backbone.calls] == [2, 2, 1]  # batches of batch_size
    assert all(c["max_new_tokens"] == 7 and c["greedy"] for c in backbone.calls)


def test_self_qa_uses_the_specs_own_question_and_names_missing_objects():
    spec = PromptSpec("two_object", "a photo of a circle and a square",
                      (Requirement("circle", 1), Requirement("square", 1)), question="Which two shapes?")
    backbone = CannedBackbone(["a circle and a triangle"])
    out = registry("rewards").build("self-qa", backbone=backbone)([Sample(spec, BLANK)])
    assert backbone.calls[0]["questions"] == ["Which two shapes?"]
    assert out.scores == [0.5] and out.details[0]["truth"] == "a circle and a square"
    assert out.details[0]["reason"] == "no square named"


def test_self_qa_with_tiny_shapes_prefers_right_colours():
    """The shipped model answers colours well: right-colour renders must out-score wrong-colour ones."""
    backbone = registry("backbones").build("tiny-shapes", device="cpu")
    specs = _specs(("colors",), 24, seed=3)
    reward = registry("rewards").build("self-qa", backbone=backbone, max_new_tokens=8)
    clean = reward(_renders(specs, 4, size=backbone.image_size)).scores
    wrong = reward(_renders(specs, 4, error="color", size=backbone.image_size)).scores
    assert len(clean) == len(wrong) == 24
    assert np.mean(clean) > np.mean(wrong) + 0.3, (np.mean(clean), np.mean(wrong))



class ScoringBackbone:
    """Teacher-forced scores from a table keyed by question: fixed log-probs, the truth's length + EOS."""

    def __init__(self, per_token: dict[str, list[float]]) -> None:
        self.per_token = per_token
        self.calls: list[dict] = []

    def answer_logprobs(self, images: list, questions: list[str], answers: list[str]):
        import torch

        from unirl_kit.backbones.base import AnswerScores

        self.calls.append({"n": len(images), "answers": list(answers)})
        width = max(len(self.per_token[q]) for q in questions)
        logprobs = torch.zeros(len(questions), width)
        mask = torch.zeros(len(questions), width, dtype=torch.bool)
        for i, q in enumerate(questions):
            values = self.per_token[q]
            logprobs[i, :len(values)] = torch.tensor(values)
            mask[i, :len(values)] = True
        return AnswerScores(logprobs, mask, torch.zeros(len(questions), width, dtype=torch.long))


def test_self_qa_likelihood_is_the_geometric_mean_probability_of_the_truth():
    spec = PromptSpec("colors", "a photo of a red circle", (Requirement("circle", 1, "red"),),
                      question="Q1", answer="red")
    other = PromptSpec("colors", "a photo of a blue square", (Requirement("square", 1, "blue"),),
                       question="Q2", answer="blue")
    backbone = ScoringBackbone({"Q1": [math.log(0.5), math.log(0.5)], "Q2": [math.log(0.9), math.log(0.1), 0.0]})
    reward = registry("rewards").build("self-qa-likelihood", backbone=backbone, batch_size=2)
    out = reward([Sample(spec, BLANK), Sample(other, BLANK), Sample(spec, BLANK)])
    assert out.scores == pytest.approx([0.5, (0.9 * 0.1 * 1.0) ** (1 / 3), 0.5])  # padding does not count
    assert out.details[0] == {"question": "Q1", "truth": "red", "mean_logprob": pytest.approx(math.log(0.5))}
    assert [c["n"] for c in backbone.calls] == [2, 1] and backbone.calls[0]["answers"] == ["red", "blue"]
    with pytest.raises(InputError, match="batch_size"):
        registry("rewards").build("self-qa-likelihood", backbone=backbone, batch_size=0)


def test_self_qa_likelihood_with_tiny_shapes_prefers_right_colours():
    backbone = registry("backbones").build("tiny-shapes", device="cpu")
    specs = _specs(("colors",), 24, seed=3)
    reward = registry("rewards").build("self-qa-likelihood", backbone=backbone)
    clean = reward(_renders(specs, 4, size=backbone.image_size)).scores
    wrong = reward(_renders(specs, 4, error="color", size=backbone.image_size)).scores
    assert all(0.0 < s <= 1.0 for s in clean + wrong)
    assert np.mean(clean) > np.mean(wrong) + 0.3, (np.mean(clean), np.mean(wrong))

# ---- geneval -------------------------------------------------------------------------------------

def test_requirement_checks_are_what_the_verdict_ands():
    """The partial-credit helper and GenEval's verdict are one computation: same reasons, same order."""
    spec = PromptSpec("position", "a photo of a red circle left of a square",
                      (Requirement("square", 1), Requirement("circle", 1, "red", ("left of", 0))),
                      (Requirement("cross", 1),))
    square = Detection("square", (40, 10, 60, 30), 0.9)
    left, right = Detection("circle", (5, 10, 25, 30), 0.9), Detection("circle", (70, 10, 90, 30), 0.9)
    cross = Detection("cross", (0, 50, 10, 60), 0.9)
    opts = RuleOptions()
    cases = [([square, left], "red", [True, True, True]), ([square, right], "red", [True, False, True]),
             ([square, left], "blue", [True, False, True]), ([left, cross], "red", [False, False, False]),
             ([square, left, cross], "red", [True, True, False])]
    for dets, color, expected in cases:
        kept = keep_detections(dets, spec.tag, opts)
        checks = requirement_checks(spec, kept, lambda found, cls, c=color: [c] * len(found), opts)
        assert [c.passed for c in checks] == expected
        assert [(c.kind, c.index) for c in checks] == [("include", 0), ("include", 1), ("exclude", 0)]
        verdict = evaluate(spec, kept, lambda found, cls, c=color: [c] * len(found), opts)
        assert verdict == verdict_from_checks(checks, kept)
        assert verdict.correct == all(expected)
        assert verdict.reason.count("\n") == max(expected.count(False) - 1, 0)


def test_geneval_perfect_renders_beat_controlled_errors():
    specs = _specs(GENEVAL_TAGS, 3, seed=5)
    reward = registry("rewards").build("geneval")
    clean = _renders(specs, 6)
    assert reward(clean).scores == [1.0] * len(specs)
    detector, colors = reward.detector, reward.colors
    for error in ERRORS:
        broken_specs = [s for s in specs if error_applies(s, error)]
        broken = _renders(broken_specs, 7, error=error)
        out = reward(broken)
        assert out.scores == [0.0] * len(broken), error
        # the reward's verdict is exactly `eval geneval`'s
        for sample, detail, dets in zip(broken, out.details, detector.detect([s.image for s in broken],
                                                                             ["x"] * len(broken)), strict=True):
            verdict = verdict_for(sample.spec, sample.image, dets, colors, RuleOptions())
            assert (detail["correct"], detail["reason"]) == (verdict.correct, verdict.reason)
            assert detail["reason"]


def test_geneval_partial_credit_for_a_missing_object():
    spec = PromptSpec("two_object", "a photo of a circle and a square",
                      (Requirement("circle", 1), Requirement("square", 1)))
    samples = _renders([spec, spec], 8) + _renders([spec], 9, error="missing")
    partial = registry("rewards").build("geneval-partial")([samples[0], samples[2]])
    assert partial.scores == [1.0, 0.5]
    assert partial.details[1] == {"correct": False, "reason": "expected square>=1, found 0",
                                  "checks_passed": 1, "checks_total": 2}
    assert registry("rewards").build("geneval")([samples[2]]).scores == [0.0]
    assert registry("rewards").build("geneval", partial=True)([samples[2]]).scores == [0.5]
    assert registry("rewards").build("geneval-partial", partial=False)([samples[2]]).scores == [0.0]


def test_geneval_refuses_classes_its_detector_does_not_know():
    spec = PromptSpec("single_object", "a photo of a bowl", (Requirement("bowl", 1),))
    with pytest.raises(InputError, match="class 'bowl' is unknown to detector 'shapes'"):
        registry("rewards").build("geneval")([Sample(spec, BLANK)])


# ---- clip-score ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, str]:
    from unirl_kit.testing.tiny_models import save_tiny_clip

    config, weights = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return str(config), str(weights)


def test_clip_score_is_finite_per_sample_and_deterministic(tiny_clip):
    samples = _renders(_specs(("colors", "two_object"), 2, seed=10), 11)
    build = lambda **kw: registry("rewards").build(  # noqa: E731
        "clip-score", model=tiny_clip[0], pretrained=tiny_clip[1], device="cpu", **kw)
    reward = build(batch_size=3)
    out = reward(samples)
    assert len(out.scores) == len(samples) == len(out.details)
    assert all(math.isfinite(s) and 0.0 <= s <= 2.5 for s in out.scores)
    assert all(s == pytest.approx(2.5 * max(d["cosine"], 0.0)) for s, d in zip(out.scores, out.details, strict=True))
    assert reward(samples).scores == out.scores  # cached prompt embeddings change nothing
    assert build(batch_size=1)(samples).scores == pytest.approx(out.scores, abs=1e-5)
    assert build(scale=1.0)(samples).scores == pytest.approx([s / 2.5 for s in out.scores], abs=1e-5)


def test_clip_score_never_downloads(tiny_clip, monkeypatch):
    import huggingface_hub

    with pytest.raises(InputError, match="give pretrained=FILE"):
        registry("rewards").build("clip-score", model=tiny_clip[0])

    asked = []

    def not_cached(*args, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    with pytest.raises(InputError, match="rewards.clip-score.pretrained=openai: .* not in the local cache"):
        registry("rewards").build("clip-score", model="ViT-B-32", pretrained="openai")
    assert asked and all(asked)  # only ever looked in the cache
    with pytest.raises(InputError, match="rewards.clip-score.pretrained=nope.pt: weights file not found"):
        registry("rewards").build("clip-score", model="ViT-B-32", pretrained="nope.pt")


# ---- registry and composition --------------------------------------------------------------------

def test_builtin_rewards_are_registered_with_their_names():
    reg = registry("rewards")
    for name, needs_backbone in (("self-qa", True), ("self-qa-likelihood", True), ("geneval", False), ("geneval-partial", False),
                                 ("clip-score", False)):
        assert name in reg.names()
        assert reg.get(name).name == name and reg.get(name).needs_backbone is needs_backbone
    assert all(desc for name, desc, _ in reg.describe() if name in ("self-qa", "geneval", "clip-score"))


def test_composition_weights_each_reward():
    spec = PromptSpec("two_object", "a photo of a circle and a square",
                      (Requirement("circle", 1), Requirement("square", 1)))
    samples = _renders([spec], 12) + _renders([spec], 13, error="missing")
    composed = build_rewards(["geneval", "geneval-partial:0.5"])
    out = composed(samples)
    totals, records = out.scores, out.details
    assert composed.names == ["geneval", "geneval-partial"]
    assert totals == [1.0 + 0.5 * 1.0, 0.0 + 0.5 * 0.5]
    assert records[1]["rewards"] == {"geneval": 0.0, "geneval-partial": 0.5}
    assert records[1]["details"]["geneval-partial"]["checks_total"] == 2


def test_composition_needs_a_backbone_for_self_qa():
    with pytest.raises(InputError, match="needs a backbone"):
        build_rewards(["self-qa"])
    out = build_rewards(["self-qa:2"], backbone=CannedBackbone(["three bowls"]))([Sample(FOUR_BOWLS, BLANK)])
    totals = out.scores
    assert totals == [1.0]


class _NaNReward:
    name = "nan"
    needs_backbone = False

    def __call__(self, samples):
        return RewardOutput([0.0] + [math.nan] * (len(samples) - 1))


class _BrokenReward:
    name = "broken"
    needs_backbone = False

    def __call__(self, samples):
        raise ZeroDivisionError("boom")


def test_a_bad_reward_is_an_error_naming_it_and_the_sample():
    samples = [Sample(FOUR_BOWLS, BLANK, path="00000/samples/0000.png"),
               Sample(FOUR_BOWLS, BLANK, path="00000/samples/0001.png")]
    with pytest.raises(RewardError, match=r"reward 'my-nan' gave nan for 00000/samples/0001.png"):
        ComposedReward([("my-nan", 1.0, _NaNReward())])(samples)
    with pytest.raises(RewardError, match=r"reward 'broken' failed on 00000/samples/0000.png .. "
                                          r"00000/samples/0001.png: ZeroDivisionError: boom"):
        ComposedReward([("broken", 1.0, _BrokenReward())])(samples)
    unlabelled = [Sample(FOUR_BOWLS, BLANK, prompt_index=3, image_index=1)] * 2
    with pytest.raises(RewardError, match="prompt 3 image 1"):
        ComposedReward([("my-nan", 1.0, _NaNReward())])(unlabelled)


def test_unknown_reward_name_suggests_the_close_one():
    with pytest.raises(UnknownPluginError, match="did you mean 'geneval'"):
        build_rewards(["genevall"])
    with pytest.raises(InputError, match="unknown option 'partail'"):
        build_rewards(["geneval"], {"geneval": {"partail": True}})
