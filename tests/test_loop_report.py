"""`unirl loop`'s report on a hand-built loop folder: numbers and deltas checked by hand, the markdown
tables, valid PNG figures, nulls (not crashes) for missing pieces, and byte-identical reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from unirl_kit.eval.geneval.summary import summarize as geneval_summary
from unirl_kit.eval.understanding.imbalance import imbalance
from unirl_kit.eval.understanding.selfqa import per_tag_metrics
from unirl_kit.loop.report import build_report, print_report, write_report
from unirl_kit.scoring.summary import summarize as score_summary

TAGS = ["single_object"] * 4 + ["counting"] * 4  # 8 eval prompts, 2 images each
FIGURES = ["reward_curve", "geneval_tags", "understanding", "imbalance", "grid"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# per round: GenEval images correct per tag (of 8), clean accuracy, self-QA rows (tag, correct),
# imbalance (gen right, und right) over 4 prompts, self-qa reward of every image
ROUNDS = {
    0: {"geneval": {"single_object": 4, "counting": 2}, "clean": {"single_object": 0.5, "counting": 0.3},
        "selfqa": [("single_object", True), ("single_object", False), ("counting", True)],
        "gen": [True, True, False, False], "und": [False, True, True, False], "reward": 0.2},
    1: {"geneval": {"single_object": 6, "counting": 2}, "clean": {"single_object": 0.7, "counting": 0.3},
        "selfqa": [("single_object", True)] * 3 + [("counting", False)],
        "gen": [True, True, True, False], "und": [True, True, False, False], "reward": 0.6},
}


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _samples(folder: Path, r: int) -> None:
    """GenEval layout as `unirl generate` writes it; each round's grids in their own colour."""
    for i, tag in enumerate(TAGS):
        p = folder / "samples" / f"{i:05d}"
        (p / "samples").mkdir(parents=True)
        (p / "metadata.jsonl").write_text(json.dumps({"tag": tag, "prompt": f"a photo of prompt {i}",
                                                      "include": [{"class": "circle", "count": 1}]}) + "\n")
        for k in range(2):
            Image.new("RGB", (16, 16), (30 * i, 100 * r, 50 * k)).save(p / "samples" / f"{k:04d}.png")
        Image.new("RGB", (34, 16), (30 * i, 120 * r + 60, 0)).save(p / "grid.png")


def _round(loop: Path, r: int, spec: dict, parts: set[str]) -> None:
    folder = loop / f"round-{r:03d}"
    folder.mkdir(parents=True)
    _samples(folder, r)
    if "geneval" in parts:
        rows, seen = [], {t: 0 for t in spec["geneval"]}
        for i, tag in enumerate(TAGS):
            for k in range(2):
                rows.append({"filename": f"{folder}/samples/{i:05d}/samples/{k:04d}.png", "tag": tag,
                             "prompt": f"p{i}", "correct": seen[tag] < spec["geneval"][tag], "reason": "",
                             "metadata": json.dumps({"i": i}), "details": "{}"})
                seen[tag] += 1
        _write(folder / "geneval" / "summary.json", geneval_summary(rows))
        (folder / "geneval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if "scores" in parts:
        rows = [{"prompt_index": i, "tag": tag, "prompt": f"p{i}", "reward": spec["reward"],
                 "rewards": {"self-qa": spec["reward"]}} for i, tag in enumerate(TAGS) for _ in range(2)]
        _write(folder / "scores_summary.json", score_summary(rows, [("self-qa", 1.0)]))
    if "understanding" in parts:
        clean = {"accuracy": spec["clean"], "credit": spec["clean"], "overall": sum(spec["clean"].values()) / 2,
                 "per_tag": 10, "seed": 1234, "overall_credit": 0.0}
        sq = per_tag_metrics([{"tag": t, "correct": c, "credit": float(c)} for t, c in spec["selfqa"]])
        keys = [f"{i:05d}" for i in range(4)]
        imb = imbalance(dict(zip(keys, spec["gen"], strict=True)), dict(zip(keys, spec["und"], strict=True)))
        protocols = {"clean": clean, "geneval_correct": {**sq, "images": 16, "images_judged_correct": 4},
                     "imbalance": {**imb, "gen_rule": "majority", "und_rule": "majority",
                                   "gen_right_share": 0.5, "und_right_share": 0.5}}
        _write(folder / "understanding" / "summary.json",
               {"backbone": "tiny-shapes", "model": None, "protocols": protocols, "seconds": {}})
        clean_rows = [{"protocol": "clean", "tag": t, "prompt": f"c{j}", "correct": j < round(10 * acc)}
                      for t, acc in spec["clean"].items() for j in range(10)]  # 10 renders per tag, same each round
        own = [{"protocol": "geneval_correct", "image": f"{i:05d}/samples/0000.png", "prompt_key": f"{i:05d}",
                "tag": t, "correct": c} for i, (t, c) in enumerate(spec["selfqa"])]
        verdicts = [{"protocol": "imbalance", "prompt_key": k, "images": 2, "gen_right": g, "und_right": u}
                    for k, g, u in zip(keys, spec["gen"], spec["und"], strict=True)]
        (folder / "understanding" / "rows.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in [*clean_rows, *own, *verdicts]))
    if r > 0:
        _write(folder / "train.done.json", {"seconds": 12.5, "grpo": {"steps": 4}})
        (folder / "train").mkdir()
        (folder / "train" / "config.yaml").write_text("command: train grpo\nprompts_per_step: 4\nrun:\n  steps: 4\n")
        steps = [{"step": s, "reward/mean": 0.1 * s, "reward/std": 0.05, "reward/self-qa/mean": 0.1 * s,
                  "zero_std_share/gen": 0.25, "loss/gen": -0.01 * s, "kl/gen": float("nan") if s == 2 else 0.001,
                  "lr": 1e-5, "time/generate": 1.5} for s in range(1, 5)]
        (folder / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps) + '{"step": 5, "rew')
    _write(folder / "eval.done.json", {"seconds": 3.0})


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    out = tmp_path / "loop"
    out.mkdir()
    (out / "config.yaml").write_text("command: loop\nout: x\nrounds: 1\ntrain: grpo\nworld: shapes\n")
    for r, spec in ROUNDS.items():
        _round(out, r, spec, {"geneval", "scores", "understanding"})
    return out


def plain(tree: object) -> object:
    """A delta tree with each {delta, ci, n...} entry cut to its delta."""
    if isinstance(tree, dict):
        return tree["delta"] if "delta" in tree else {k: plain(v) for k, v in tree.items()}
    return tree


def test_numbers_and_deltas(loop: Path) -> None:
    report = write_report(loop)
    assert report == json.loads((loop / "report.json").read_text())
    assert (report["baseline_round"], report["last_round"], report["planned_rounds"]) == (0, 1, 1)
    r0, r1 = report["rounds"]
    assert r0["geneval"]["tags"] == {"single_object": 0.5, "counting": 0.25} and r0["geneval"]["overall"] == 0.375
    assert r1["geneval"]["overall"] == 0.5 and r0["training"] is None and not r0["trained"]
    d = plain(report["delta"])
    assert (d["from_round"], d["to_round"]) == (0, 1)
    assert d["geneval"] == {"overall": 0.125, "tags": {"single_object": 0.25, "counting": 0.0}}
    assert d["understanding"]["clean"] == {"overall": 0.1, "accuracy": {"single_object": 0.2, "counting": 0.0}}
    assert r0["understanding"]["geneval_correct"]["accuracy"] == {"single_object": 0.5, "counting": 1.0}
    assert d["understanding"]["geneval_correct"] == {"overall": -0.25,
                                                     "accuracy": {"single_object": 0.5, "counting": -1.0}}
    assert r0["understanding"]["imbalance"]["imbalance"] == 0.5
    assert d["imbalance"] == {"gen_right_und_wrong": 0.0, "und_right_gen_wrong": -0.25, "imbalance": -0.25}
    assert r1["scores"]["total"] == 0.6 and d["scores"] == {"total": 0.4, "rewards": {"self-qa": 0.4}}
    (phase,) = r1["training"]
    assert (phase["phase"], phase["steps"], phase["global_offset"]) == ("grpo", [1, 2, 3, 4], 0)  # torn line 5 dropped
    assert phase["metrics"]["reward/mean"] == [0.1, 0.2, 0.3, 0.4]
    assert phase["metrics"]["kl/gen"] == [0.001, None, 0.001, 0.001]  # NaN -> null
    assert r1["train_seconds"] == 12.5 and r1["trained"] and r1["evaluated"]
    assert r1["step_seconds"] == 6.0 and r0["step_seconds"] is None  # 4 logged steps x 1.5 s of generate
    assert report["figures"] == {name: f"figures/{name}.png" for name in FIGURES}
    assert [r["contact_sheet"] for r in report["rounds"]] == ["round-000/contact_sheet.png", "round-001/contact_sheet.png"]


def test_markdown_tables(loop: Path) -> None:
    write_report(loop)
    md = (loop / "report.md").read_text()
    assert md.startswith("# UniRL loop report: loop\n")
    for heading in ("### GenEval", "### Understanding accuracy: clean renders",
                    "### Understanding accuracy: own images judged correct", "### Imbalance", "## Per round",
                    "## What changed", "## Figures"):
        assert heading in md
    assert "| task | round 0 | round 1 | Δ [95% CI] | n (prompts / images) |" in md
    assert "| single_object | 0.500 | 0.750 | +0.250 [+0.000, +0.750] | 4 / 8 |" in md
    assert "| overall | 0.375 | 0.500 | +0.125 [+0.000, +0.375] | 8 / 16 |" in md
    assert "| imbalance (sum) | 0.500 | 0.250 | -0.250 [-0.750, +0.000] | 4 / 8 |" in md
    assert "GenEval overall: 0.375 → 0.500 (Δ +0.125 [+0.000, +0.375], n = 8 prompts / 16 images)." in md
    assert "| 1 | yes | grpo (4) | 0.400 | 0.500 |" in md
    for name in FIGURES:
        assert f"(figures/{name}.png)" in md


def test_figures_are_pngs(loop: Path) -> None:
    write_report(loop)
    for name in FIGURES:
        path = loop / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100 and "Software" not in im.info
    with Image.open(loop / "figures" / "grid.png") as im:  # 6 prompts of 160 px (+ gaps) after the labels
        grid = im.convert("RGB")
    assert grid.size[0] == 80 + 6 * 166 + 6
    column = [grid.getpixel((80 + 80, y)) for y in range(grid.size[1])]  # prompt 0: round 0 above round 1
    assert column.index((0, 60, 0)) < column.index((0, 180, 0))
    colours = {c for _, c in grid.getcolors(1 << 16)}
    assert (150, 60, 0) in colours and (150, 180, 0) in colours and (180, 60, 0) not in colours  # prompts 0-5


def test_rerun_is_byte_identical(loop: Path) -> None:
    def files() -> dict[str, bytes]:
        paths = [loop / "report.json", loop / "report.md", *(loop / "figures").iterdir(), *loop.glob("round-*/contact_sheet.png")]
        return {str(p.relative_to(loop)): p.read_bytes() for p in paths}

    write_report(loop)
    first = files()
    write_report(loop)
    assert first == files() and "round-001/contact_sheet.png" in first


def test_missing_pieces_are_null(loop: Path) -> None:
    shutil.rmtree(loop / "round-001" / "understanding")  # protocols not run in round 1
    (loop / "round-000" / "scores_summary.json").write_text('{"overall": ')  # torn
    unfinished = loop / "round-002"  # trained, not evaluated yet
    (unfinished / "train").mkdir(parents=True)
    (unfinished / "train" / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    report = write_report(loop)
    r0, r1, r2 = report["rounds"]
    assert report["last_round"] == 1 and not r2["evaluated"] and r2["geneval"] is None
    assert r2["training"][0]["global_offset"] == 4 and r2["training"][0]["phase"] == "train"
    assert r1["understanding"] is None and r0["scores"] is None
    d = plain(report["delta"])
    assert d["understanding"]["clean"]["overall"] is None
    assert d["understanding"]["clean"]["accuracy"] == {"single_object": None, "counting": None}
    assert d["imbalance"]["imbalance"] is None and d["scores"]["total"] is None
    assert d["geneval"]["overall"] == 0.125
    assert report["figures"]["imbalance"] == "figures/imbalance.png"  # round 0's bars alone
    md = (loop / "report.md").read_text()
    assert "| imbalance (sum) | 0.500 | – | – | – |" in md and "| 2 | no | train (1) | 0.500 | – |" in md
    assert report["delta"]["scores"]["total"]["note"] == "not measured in both rounds"
    assert report["rounds"][2]["contact_sheet"] is None  # not evaluated


def test_baseline_only_and_empty(tmp_path: Path, loop: Path) -> None:
    shutil.rmtree(loop / "round-001")
    (loop / "round-000" / "understanding" / "summary.json").write_text(json.dumps(
        {"backbone": "x", "model": None, "protocols": {"clean": {"accuracy": {"colors": 1.0}, "overall": 1.0}}}))
    report = write_report(loop)
    assert report["last_round"] is None and report["delta"] is None
    assert report["rounds"][0]["understanding"]["imbalance"] is None
    assert report["figures"]["reward_curve"] is None and not (loop / "figures" / "reward_curve.png").exists()
    assert report["figures"]["grid"] == "figures/grid.png"
    assert "nothing to compare yet" in (loop / "report.md").read_text()
    empty = write_report(tmp_path / "empty")
    assert empty["rounds"] == [] and empty["delta"] is None and all(v is None for v in empty["figures"].values())
    assert build_report(tmp_path / "nowhere")["rounds"] == []


def test_print_report(loop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_report(write_report(loop))
    out = capsys.readouterr().out
    assert "GenEval" in out and "single_object" in out and "+0.125" in out and "Per round" in out


def test_figures_show_the_report_numbers(loop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each chart is asked to draw (the PNG bytes alone cannot say a bar is missing)."""
    from unirl_kit.loop import figures

    drawn: dict[str, tuple] = {}
    errors: dict[str, object] = {}

    def bars(path: Path, panels: list, title: str, **kw: object) -> None:
        drawn[path.stem], errors[path.stem] = panels, kw["errors"]

    monkeypatch.setattr(figures, "bars", bars)
    monkeypatch.setattr(figures, "reward_curve", lambda path, curves, bounds, ylabel, bands: drawn.__setitem__(
        path.stem, (curves, bounds, bands)))
    figures.draw(build_report(loop), loop)
    (title, cats, series), = drawn["geneval_tags"]
    assert cats == ["single_object", "counting", "overall"]
    assert series == {"round 0": [0.5, 0.25, 0.375], "round 1": [0.75, 0.25, 0.5]}
    clean, own = drawn["understanding"]
    assert clean[2]["round 1"] == [0.7, 0.3, 0.5] and own[2]["round 0"] == [0.5, 1.0, 0.75]
    assert drawn["imbalance"][0][2] == {"round 0": [0.25, 0.25, 0.5], "round 1": [0.25, 0.0, 0.25]}
    (label, xs, ys), = drawn["reward_curve"][0]
    assert (label, list(xs), list(ys)) == ("round 1 grpo", [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    # each bar's own round interval: round 0's single_object prompts score [1, 1, 0, 0], counting [1, 0, 0, 0];
    # a resample of 4 is all zeros with p = 1/16 (> 2.5%) and all ones with 1/16: [0, 1]; counting [0, 0.75]
    (geneval_errors,) = errors["geneval_tags"]
    assert geneval_errors["round 0"][:2] == [[0.0, 1.0], [0.0, 0.75]]
    assert errors["understanding"][1]["round 0"] == [None, None, None]  # 1-2 answers per tag: no interval
    ((lo, hi),) = drawn["reward_curve"][2]  # ±1.96 · std 0.05 / √(4 prompts) = ±0.049
    assert lo == pytest.approx([0.051, 0.151, 0.251, 0.351]) and hi == pytest.approx([0.149, 0.249, 0.349, 0.449])


def test_sft_then_grpo_phases(loop: Path) -> None:
    """`train: both`: train_sft/ before train/ in a round, global steps running on across phases and rounds."""
    sft = loop / "round-001" / "train_sft"
    sft.mkdir()
    (sft / "config.yaml").write_text("command: train sft\n")
    (sft / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/sft": 2.0 / s, "kept": 3}) + "\n"
                                               for s in (1, 2, 3)))
    later = loop / "round-002" / "train"
    later.mkdir(parents=True)
    (later / "config.yaml").write_text("command: train grpo\n")
    (later / "metrics.jsonl").write_text('{"step": 2, "reward/mean": 0.9}\n{"step": 1, "reward/mean": 0.8}\n')
    report = write_report(loop)
    sft_phase, grpo_phase = report["rounds"][1]["training"]
    assert (sft_phase["phase"], sft_phase["global_offset"], grpo_phase["phase"], grpo_phase["global_offset"]) == \
        ("sft", 0, "grpo", 3)
    assert sft_phase["metrics"] == {"loss/sft": [2.0, 1.0, 0.666667], "kept": [3.0, 3.0, 3.0]}
    (late,) = report["rounds"][2]["training"]
    assert late["global_offset"] == 7 and late["steps"] == [1, 2] and late["metrics"]["reward/mean"] == [0.8, 0.9]
    assert report["last_round"] == 1  # round 2 is not evaluated
    assert "| 1 | yes | sft (3), grpo (4) | 0.400 |" in (loop / "report.md").read_text()
