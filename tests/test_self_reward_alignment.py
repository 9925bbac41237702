"""benchmarks/self_reward_alignment.py's arithmetic: AUC overall and inside groups, per tag."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("self_reward_alignment")


def test_auc_counts_ties_half_and_needs_both_kinds(bench):
    assert bench.auc([1.0, 0.5], [0.5, 0.0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert bench.auc([0.2], [0.8]) == 0.0
    assert bench.auc([1.0], []) is None


def _r(prompt, correct, reward, tag="counting"):
    return {"tag": tag, "prompt": prompt, "correct": correct, "self-qa": reward, "self-qa-likelihood": -reward}


def test_within_group_compares_only_images_of_one_prompt(bench):
    rows = [_r("a", True, 0.9), _r("a", False, 0.1), _r("a", False, 0.9),  # pairs: win, tie
            _r("b", True, 0.0), _r("c", False, 1.0)]  # b and c have one verdict each: no pair
    assert bench.within_group(rows, "self-qa") == (pytest.approx(0.75), 2)
    assert bench.within_group(rows[3:], "self-qa") == (None, 0)


def test_summarize_per_tag_and_all(bench):
    rows = [_r("a", True, 1.0), _r("a", False, 0.0), _r("x", True, 0.0, tag="colors"), _r("x", False, 1.0, tag="colors")]
    table = bench.summarize(rows)
    assert table["counting"]["self-qa: AUC"] == 1.0 and table["colors"]["self-qa: AUC in groups"] == 0.0
    assert table["counting"]["self-qa-likelihood: AUC"] == 0.0  # the negated reward ranks the other way
    assert table["all"]["images"] == 4 and table["all"]["self-qa: AUC"] == 0.5 and table["all"]["pairs in groups"] == 2
    assert table["counting"]["self-qa: mean if correct"] == 1.0 and table["counting"]["self-qa: mean if wrong"] == 0.0
