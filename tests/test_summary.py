"""GenEval's summary (`unirl_kit.eval.geneval.summary`) against the official `summary_scores.py`,
which reads results.jsonl with pandas and averages per tag, then over tags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unirl_kit.eval.geneval.summary import dumps, summarize, to_markdown


def row(tag: str, correct: bool, prompt: str, i: int = 0) -> dict:
    meta = json.dumps({"tag": tag, "include": [{"class": prompt, "count": 1}], "prompt": f"a photo of a {prompt}"})
    return {"filename": f"out/{prompt}/samples/{i:04d}.png", "tag": tag, "prompt": f"a photo of a {prompt}",
            "correct": correct, "reason": "", "metadata": meta, "details": "{}"}


def official(rows: list[dict], tmp_path=None) -> dict:
    """What summary_scores.py computes, through pandas as it does."""
    if tmp_path is not None:  # read back the way the official script does
        path = tmp_path / "results.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        df = pd.read_json(path, orient="records", lines=True)
    else:
        df = pd.DataFrame(rows)
    per_tag = df.groupby("tag", sort=False)["correct"].mean()
    return {
        "total_images": len(df),
        "total_prompts": len(df.groupby("metadata")),
        "pct_images_correct": 100 * df["correct"].mean(),
        "pct_prompts_correct": 100 * df.groupby("metadata")["correct"].any().mean(),
        "tags": list(per_tag.index),
        "scores": [float(v) for v in per_tag.values],
        "overall": float(np.mean(per_tag.values)),
    }


def unbalanced() -> list[dict]:
    # single_object: 1 image, correct; counting: 3 images over 2 prompts, 1 correct; colors: 4 images, 0 correct
    return [
        row("single_object", True, "cow"),
        row("counting", False, "clock", 0),
        row("counting", True, "clock", 1),
        row("counting", False, "cup", 0),
        *(row("colors", False, "bus", i) for i in range(4)),
    ]


def test_overall_is_unweighted_mean_of_tag_means():
    s = summarize(unbalanced())
    assert s["tags"]["single_object"] == {"score": 1.0, "correct": 1, "images": 1}
    assert s["tags"]["counting"]["score"] == pytest.approx(1 / 3)
    assert s["tags"]["counting"]["correct"] == 1 and s["tags"]["counting"]["images"] == 3
    assert s["tags"]["colors"]["score"] == 0.0
    assert s["overall"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    image_weighted = 2 / 8
    assert abs(s["overall"] - image_weighted) > 0.1  # the two readings really differ here
    assert s["pct_images_correct"] == pytest.approx(100 * image_weighted)


def test_prompts_grouped_by_metadata_string():
    s = summarize(unbalanced())
    assert s["total_images"] == 8
    assert s["total_prompts"] == 4  # cow, clock, cup, bus
    assert s["pct_prompts_correct"] == pytest.approx(100 * 2 / 4)  # cow and clock have a correct image


def test_same_prompt_text_with_different_metadata_counts_twice():
    a, b = row("colors", True, "bus"), row("colors", False, "bus")
    b["metadata"] = b["metadata"].replace('"count": 1', '"count": 1, "color": "red"')
    s = summarize([a, b])
    assert s["total_prompts"] == 2
    assert s["pct_prompts_correct"] == pytest.approx(50.0)


def test_tags_in_order_of_first_appearance():
    rows = [row("position", True, "a"), row("colors", False, "b"), row("position", False, "c"),
            row("single_object", True, "d"), row("colors", True, "e")]
    assert list(summarize(rows)["tags"]) == ["position", "colors", "single_object"]


def test_matches_official_pandas_summary(tmp_path):
    rows = unbalanced()
    s, ref = summarize(rows), official(rows, tmp_path)
    assert list(s["tags"]) == ref["tags"]
    assert [t["score"] for t in s["tags"].values()] == pytest.approx(ref["scores"])
    assert s["overall"] == pytest.approx(ref["overall"])
    for key in ("total_images", "total_prompts"):
        assert s[key] == ref[key]
    for key in ("pct_images_correct", "pct_prompts_correct"):
        assert s[key] == pytest.approx(ref[key])


TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TAGS), st.integers(0, 5), st.booleans()), min_size=1, max_size=40))
def test_random_results_match_official_pandas(items):
    rows = [row(tag, ok, f"p{p}", i) for i, (tag, p, ok) in enumerate(items)]
    s, ref = summarize(rows), official(rows)
    assert list(s["tags"]) == ref["tags"]
    assert [t["score"] for t in s["tags"].values()] == pytest.approx(ref["scores"])
    assert s["overall"] == pytest.approx(ref["overall"])
    assert s["total_images"] == ref["total_images"]
    assert s["total_prompts"] == ref["total_prompts"]
    assert s["pct_images_correct"] == pytest.approx(ref["pct_images_correct"])
    assert s["pct_prompts_correct"] == pytest.approx(ref["pct_prompts_correct"])


def test_empty_results_do_not_crash():
    s = summarize([])
    assert s["overall"] == 0.0 and s["tags"] == {} and s["total_images"] == 0


def test_outputs_are_json_and_markdown():
    s = summarize(unbalanced())
    assert json.loads(dumps(s)) == json.loads(json.dumps(s))
    md = to_markdown(s)
    assert "| counting | 0.3333 | 1 / 3 |" in md
    assert f"**{s['overall']:.4f}**" in md
