"""The loop report's trust: every delta with its n and a 95% interval (checked by hand on tiny cases),
best/worst only beyond the interval, error bars and outside legends on the charts, and each round's
contact sheet. Builds on test_loop_report's hand-made loop folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from PIL import Image
from test_loop_report import ROUNDS, TAGS, _round  # the hand-made loop folder

from unirl_kit.eval.geneval.paired import describe, paired_units, unit_interval, unpaired_units
from unirl_kit.loop import figures, sheets
from unirl_kit.loop.report import write_report


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    out = tmp_path / "loop"
    out.mkdir()
    (out / "config.yaml").write_text("command: loop\nout: x\nrounds: 1\ntrain: grpo\nworld: shapes\n")
    for r, spec in ROUNDS.items():
        _round(out, r, spec, {"geneval", "scores", "understanding"})
    return out


def _results(folder: Path, correct: dict[int, int]) -> None:
    """Rewrite a round's GenEval results: prompt i has correct[i] of its 2 images right (else 0)."""
    rows = [{"filename": f"x/{i:05d}/samples/{k:04d}.png", "tag": tag, "prompt": f"p{i}",
             "correct": k < correct.get(i, 0)} for i, tag in enumerate(TAGS) for k in range(2)]
    (folder / "geneval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_delta_has_its_n_and_interval(loop: Path) -> None:
    """Hand computation. single_object per prompt 1,1,0,0 -> 1,1,1,0: differences [0, 0, 1, 0], delta 0.25;
    a resample of 4 is all zeros with p = (3/4)^4 = 32% and holds the 1 three or four times with p = 5.1%
    (four: 0.4%), so the 2.5/97.5 percentiles are 0 and 0.75. counting: no prompt changes, [0, 0].
    overall = mean of the two tags: [0, 0.375], over 8 prompts / 16 images."""
    d = write_report(loop)["delta"]
    assert d["geneval"]["tags"]["single_object"] == {"delta": 0.25, "ci": [0.0, 0.75], "prompts": 4, "images": 8,
                                                     "paired": True}
    assert d["geneval"]["tags"]["counting"]["ci"] == [0.0, 0.0]
    assert d["geneval"]["overall"] == {"delta": 0.125, "ci": [0.0, 0.375], "prompts": 8, "images": 16, "paired": True}
    # imbalance per prompt (gen != und): 1,0,1,0 -> 0,0,1,0, differences [-1, 0, 0, 0]: [-0.75, 0]
    assert d["imbalance"]["imbalance"] == {"delta": -0.25, "ci": [-0.75, 0.0], "prompts": 4, "images": 8,
                                           "paired": True}
    assert d["scores"]["total"]["ci"] == [0.4, 0.4] and d["scores"]["total"]["prompts"] == 8  # every prompt +0.4
    clean = d["understanding"]["clean"]
    assert clean["accuracy"]["single_object"]["prompts"] == 10 and clean["accuracy"]["single_object"]["delta"] == 0.2
    own = d["understanding"]["geneval_correct"]  # other images each round: unpaired, and 1-3 per tag
    assert own["overall"] == {"delta": -0.25, "ci": None, "prompts": 4, "images": 4, "note": "no interval: n < 4",
                              "paired": False, "before": {"prompts": 3, "images": 3}}
    md = (loop / "report.md").read_text()
    assert "| single_object | 0.500 | 1.000 | +0.500 (no interval: n < 4) | 2 / 2 → 3 / 3 (unpaired) |" in md
    assert "| total | 0.200 | 0.600 | +0.400 [+0.400, +0.400] | 8 / 16 |" in md
    iv = json.loads((loop / "report.json").read_text())["rounds"][0]["intervals"]
    assert iv["geneval"]["tags"]["single_object"] == {"value": 0.5, "ci": [0.0, 1.0], "prompts": 4, "images": 8}


def test_best_and_worst_only_beyond_their_interval(loop: Path) -> None:
    write_report(loop)
    md = (loop / "report.md").read_text()
    assert "- GenEval per tag: no tag changed beyond its interval." in md and "best" not in md
    _results(loop / "round-000", {4: 2, 5: 2, 6: 2, 7: 2})  # counting right, single_object wrong ...
    _results(loop / "round-001", {0: 2, 1: 2, 2: 2, 3: 2})  # ... and the other way round
    write_report(loop)
    md = (loop / "report.md").read_text()
    assert ("GenEval per tag, among changes beyond their interval: best single_object (+1.000 [+1.000, +1.000], "
            "n = 4 prompts / 8 images), worst counting (-1.000 [-1.000, -1.000], n = 4 prompts / 8 images).") in md


def test_units_small_n_and_unpaired() -> None:
    one = paired_units({"a": ("t", 0.0, 2)}, {"a": ("t", 1.0, 2)})
    assert one["overall"] == {"delta": 1.0, "ci": None, "prompts": 1, "images": 2, "note": "no interval: n < 4",
                              "paired": True}
    assert describe(one["overall"]) == "+1.000 (no interval: n < 4), n = 1 prompts / 2 images"
    before = {f"{i}": ("t", 0.0, 1) for i in range(4)}
    after = {f"{i}": ("t", 1.0, 1) for i in range(4, 9)}  # other units: each side resampled alone
    un = unpaired_units(before, after)["overall"]
    assert (un["delta"], un["ci"], un["paired"], un["before"]) == (1.0, [1.0, 1.0], False, {"prompts": 4, "images": 4})
    assert describe(un) == "+1.000 [+1.000, +1.000], unpaired, n = 4 → 5 prompts / 4 → 5 images"
    pooled = unit_interval({f"{i}": ("t" if i else "u", float(i == 0), 1) for i in range(4)}, pooled=True)
    assert pooled["tags"] == {} and pooled["overall"]["value"] == 0.25 and pooled["overall"]["ci"] == [0.0, 0.75]


def _outside(fig: object) -> None:
    """The legend lies in the figure and off every axes."""
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))


def test_charts_have_error_bars_and_legends_outside(loop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, object] = {}
    bars, curve = figures.bars, figures.reward_curve
    monkeypatch.setattr(figures, "bars", lambda path, *a, **kw: made.__setitem__(path.stem, bars(path, *a, **kw)))
    monkeypatch.setattr(figures, "reward_curve",
                        lambda path, *a, **kw: made.__setitem__(path.stem, curve(path, *a, **kw)))
    write_report(loop)
    assert set(made) == {"geneval_tags", "understanding", "imbalance", "reward_curve"}
    for fig in made.values():
        _outside(fig)
    (ax,) = made["reward_curve"].axes
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the reward band
    drawn = {}  # chart/panel -> error bar segments drawn (a bar without an interval has none)
    for name in ("geneval_tags", "understanding", "imbalance"):
        for i, ax in enumerate(made[name].axes):
            containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert len(containers) == 2  # one per round
            drawn[name, i] = sum(bool(seg.size and np.isfinite(seg).all()) for c in containers for seg in c.lines[2][0].get_segments())
    assert drawn == {("geneval_tags", 0): 6, ("understanding", 0): 6, ("understanding", 1): 0, ("imbalance", 0): 6}
    own = made["understanding"].axes[1]
    assert "*" in " ".join(t.get_text() for t in own.texts)  # no interval there, and the bars say so


def test_contact_sheet_per_round(loop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 prompts, 6 to a row: 2 bands. Each band: captions (2 lines of 14 px + 6), a gap, one row of cells
    (the 34 x 16 grids scaled 4x to 136 x 64, + 6). Width: 80 px labels + 6 cells of 160 + 6 + 6."""
    report = write_report(loop)
    for r in (0, 1):
        with Image.open(loop / f"round-{r:03d}" / "contact_sheet.png") as im:
            assert im.size == (80 + 6 * 166 + 6, 2 * (34 + 6 + 64 + 6))
            colours = {c for _, c in im.convert("RGB").getcolors(1 << 16)}
        assert (0, 120 * r + 60, 0) in colours and (210, 120 * r + 60, 0) in colours  # prompts 0 and 7
    assert "- round 1: [round-001/contact_sheet.png](round-001/contact_sheet.png)" in (loop / "report.md").read_text()
    assert report["rounds"][1]["contact_sheet"] == "round-001/contact_sheet.png"
    monkeypatch.setattr(sheets, "CONTACT_PROMPTS", 3)  # the cap: the first prompts only
    (loop / "round-001" / "eval.done.json").unlink()  # round 1 not evaluated: its sheet goes
    report = write_report(loop)
    with Image.open(loop / "round-000" / "contact_sheet.png") as im:
        assert im.size == (80 + 3 * 166 + 6, 34 + 6 + 64 + 6)
        assert (90, 60, 0) not in {c for _, c in im.convert("RGB").getcolors(1 << 16)}  # prompt 3
    assert not (loop / "round-001" / "contact_sheet.png").exists() and report["rounds"][1]["contact_sheet"] is None
