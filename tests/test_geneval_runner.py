"""`unirl eval geneval` end to end: the official metadata, official result rows and summary,
image names, masks, resume after a torn write, refusals, one-line errors, and rank sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unirl_kit.cli import app
from unirl_kit.eval.geneval.detectors.precomputed import PrecomputedDetector, decode_rle
from unirl_kit.eval.geneval.detectors.shapes import ShapesDetector
from unirl_kit.prompts.generate import generate_prompts
from unirl_kit.registry import registry
from unirl_kit.types import GENEVAL_COLORS, GENEVAL_TAGS, InputError
from unirl_kit.worlds.shapes.dataset import render_prompt_set

FIELDS = ["filename", "image", "tag", "prompt", "correct", "reason", "metadata", "details"]
# how many official lines of each tag go into the test folder (unequal, so the unweighted mean of
# per-tag means differs from the pooled image mean)
PER_TAG = {"single_object": 3, "two_object": 4, "counting": 5, "colors": 6, "position": 6, "color_attr": 6}
# (image 0 correct?, image 1 correct?) for the j-th prompt of a tag, shifted by the tag's index
PATTERN = [(True, True), (True, False), (False, False), (False, True), (True, False), (False, False)]
SHIFT = {"left of": (-300, 0), "right of": (300, 0), "above": (0, -300), "below": (0, 300)}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BENCH = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process runs are rank 0 of 1 whatever the environment running the tests says."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def unirl(*args):
    """The `unirl` app in this process (so a detector registered here is seen)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_one_line_error(result, *names: object) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def blank_png(path: Path, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (0, 0, 0)).save(path, format="PNG")


def prompt_folder(images: Path, index: int, metadata: dict | str, names=("0000.png",)) -> Path:
    folder = images / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    line = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (folder / "metadata.jsonl").write_text(line + "\n")
    for name in names:
        blank_png(folder / "samples" / name)
    return folder


# --------------------------------------------------------------------------------------------
# RLE: an independent encoder of pycocotools' formats


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major runs, starting with a run of zeros."""
    counts, value, run = [], False, 0
    for v in mask.T.reshape(-1):
        if bool(v) == value:
            run += 1
        else:
            counts.append(run)
            value, run = bool(v), 1
    counts.append(run)
    return counts


def rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString: from the 4th count on store the difference to the count two back;
    5 bits per character (bit 5 = more follows), sign taken from bit 4 of the last one, +48."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_rle_encoder_reproduces_hand_checked_strings():
    assert rle_string([4]) == "4"
    assert rle_string([0, 4]) == "04"
    assert rle_string([16]) == "`0"  # 16 has bit 4 set: a second character keeps it positive
    assert rle_string([3, 10, 2, 4]) == "3:2J"  # 4 - 10 = -6 -> 'J' (26 + 48), negative via bit 4


def _random_masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), dtype=bool)
    yield np.ones((5, 7), dtype=bool)
    yield np.eye(6, 9, dtype=bool)
    one = np.zeros((1, 1), dtype=bool)
    one[0, 0] = True
    yield one
    for h, w in [(32, 32), (40, 57), (3, 200), (64, 48), (120, 90)]:
        yy, xx = np.mgrid[0:h, 0:w]
        blob = (yy - rng.uniform(0, h)) ** 2 / (h / 3) ** 2 + (xx - rng.uniform(0, w)) ** 2 / (w / 3) ** 2 < 1
        yield blob
        yield blob ^ (rng.random((h, w)) < 0.05)
        yield rng.random((h, w)) < 0.5
        first_on = blob.copy()
        first_on[0, 0] = True
        yield first_on


@pytest.mark.parametrize("mask", list(_random_masks()), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_rle_masks_decode_to_the_encoded_mask(mask):
    counts = rle_counts(mask)
    assert sum(counts) == mask.size
    h, w = mask.shape
    for encoded in (counts, rle_string(counts)):
        decoded = decode_rle({"size": [h, w], "counts": encoded})
        assert decoded.shape == (h, w) and decoded.dtype == bool
        assert np.array_equal(decoded, mask)


def test_precomputed_detector_reads_rle_and_png_masks(tmp_path):
    rng = np.random.default_rng(1)
    h, w = 40, 57
    masks = [rng.random((h, w)) < p for p in (0.2, 0.5, 0.8)]
    (tmp_path / "masks").mkdir()
    Image.fromarray(masks[2].astype(np.uint8) * 255, "L").save(tmp_path / "masks" / "m.png")
    rle_list = {"size": [h, w], "counts": rle_counts(masks[0])}
    rle_str = {"size": [h, w], "counts": rle_string(rle_counts(masks[1]))}
    dets = [{"class": "cat", "box": [0, 0, 5, 5], "score": 0.9, "color": "red", "mask": m}
            for m in (rle_list, rle_str, "masks/m.png")]
    path = tmp_path / "det.jsonl"
    path.write_text(json.dumps({"filename": "00000/samples/0000.png", "detections": dets}) + "\n")
    detector = PrecomputedDetector(str(path))
    (found,) = detector.detect([Image.new("RGB", (w, h))], ["00000/samples/0000.png"])
    assert len(found) == 3
    for det, mask in zip(found, masks, strict=True):
        assert det.cls == "cat" and det.color == "red" and det.box == (0.0, 0.0, 5.0, 5.0)
        assert np.array_equal(det.mask, mask)
    with pytest.raises(InputError, match="mask"):  # a mask of another size than the image
        detector.detect([Image.new("RGB", (h, w))], ["00000/samples/0000.png"])


def test_bad_rle_is_an_input_error_naming_file_and_line(tmp_path):
    path = tmp_path / "det.jsonl"
    bad = {"class": "cat", "box": [0, 0, 5, 5], "score": 0.9, "mask": {"size": [4, 4], "counts": [3, 4]}}
    path.write_text("\n" + json.dumps({"filename": "00000/samples/0000.png", "detections": [bad]}) + "\n")
    with pytest.raises(InputError, match=rf"{path}:2.*RLE"):
        PrecomputedDetector(str(path))


# --------------------------------------------------------------------------------------------
# the official metadata file, with precomputed detections designed to pass or fail


def box(x: int, y: int) -> list[int]:
    return [x, y, x + 40, y + 40]


def five(d: dict) -> list[float]:
    return [float(v) for v in d["box"]] + [float(d["score"])]


def other_color(color: str) -> str:
    return GENEVAL_COLORS[(GENEVAL_COLORS.index(color) + 3) % len(GENEVAL_COLORS)]


def det(cls: str, xy: tuple[int, int], score: float, color: str = "red") -> dict:
    return {"class": cls, "box": box(*xy), "score": score, "color": color}


def design(meta: dict, good: bool) -> tuple[list[dict], str, dict[str, list[list[float]]]]:
    """Detections for one image of an official metadata line, with the reason and details
    GenEval's rules give them (worked out by hand for each tag)."""
    tag, inc = meta["tag"], meta["include"]
    assert all(r["count"] == 1 for r in inc) or tag == "counting"
    distractor = next(c for c in ("kite", "vase") if c not in {r["class"] for r in inc})
    if tag == "single_object":
        c = inc[0]["class"]
        if good:
            dets = [det(c, (400, 400), 0.8), det(distractor, (0, 0), 0.99)]
            return dets, "", {c: [five(dets[0])], distractor: [five(dets[1])]}
        return [det(c, (400, 400), 0.3)], f"expected {c}>=1, found 0", {}  # 0.3 is not > 0.3
    if tag == "two_object":
        a, b = inc[0]["class"], inc[1]["class"]
        dets = [det(a, (100, 400), 0.7), det(b, (700, 400), 0.6), det(b, (900, 400), 0.2)]
        if good:
            return dets, "", {a: [five(dets[0])], b: [five(dets[1])]}
        return dets[:1], f"expected {b}>=1, found 0", {a: [five(dets[0])]}
    if tag == "counting":
        (req,), (exc,) = inc, meta["exclude"]
        c, n = req["class"], req["count"]
        assert exc == {"class": c, "count": n + 1}
        if good:  # n above 0.9, one at exactly 0.9 and a distractor at 0.5: neither is kept
            dets = [det(c, (100 * i, 0), 0.99 - 0.01 * i) for i in range(n)]
            extra = [det(c, (900, 900), 0.9), det(distractor, (0, 500), 0.5)]
            return dets + extra, "", {c: [five(d) for d in dets]}
        dets = [det(c, (100 * i, 0), 0.99 - 0.01 * i) for i in range(n + 1)]
        return dets, f"expected {c}<{n + 1}, found {n + 1}", {c: [five(d) for d in dets]}
    if tag == "colors":
        c, color = inc[0]["class"], inc[0]["color"]
        if good:
            dets = [det(c, (400, 400), 0.8, color)]
            return dets, "", {c: [five(dets[0])]}
        # only the top-scoring object is judged: the right colour lower down does not help
        wrong = other_color(color)
        dets = [det(c, (400, 400), 0.8, wrong), det(c, (0, 0), 0.5, color)]
        reason = f"expected {color} {c}>=1, found 0 {color}; and 1 {wrong}"
        return dets, reason, {c: [five(d) for d in dets]}
    if tag == "position":
        ref, obj = inc
        assert obj["position"][1] == 0 and "position" not in ref
        rel = obj["position"][0]
        b, a = ref["class"], obj["class"]
        dx, dy = SHIFT[rel] if good else SHIFT[OPPOSITE[rel]]
        dets = [det(b, (400, 400), 0.9), det(a, (400 + dx, 400 + dy), 0.8)]
        reason = "" if good else f"expected {a} {rel} target, found {OPPOSITE[rel]} target"
        return dets, reason, {b: [five(dets[0])], a: [five(dets[1])]}
    assert tag == "color_attr"
    (a, ca), (b, cb) = ((r["class"], r["color"]) for r in inc)
    wrong = other_color(cb)
    dets = [det(a, (100, 400), 0.7, ca), det(b, (700, 400), 0.6, cb if good else wrong)]
    reason = "" if good else f"expected {cb} {b}>=1, found 0 {cb}; and 1 {wrong}"
    return dets, reason, {a: [five(dets[0])], b: [five(dets[1])]}


MASK_KINDS = ("list", "string", "png", None)


def attach_mask(d: dict, kind: str | None, det_dir: Path, name: str) -> None:
    """Give a detection a 32x32 mask in one of the accepted encodings."""
    if kind is None:
        return
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:20, 6:27] = True
    mask[10, :] = True
    if kind == "png":
        (det_dir / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(det_dir / "masks" / name)
        d["mask"] = f"masks/{name}"
    else:
        counts = rle_counts(mask)
        d["mask"] = {"size": [32, 32], "counts": counts if kind == "list" else rle_string(counts)}


@dataclass
class OfficialSet:
    images: Path
    detections: Path
    lines: list[str]  # the metadata line of each prompt folder, as in the official file
    expected: list[dict]  # per image, in scan order: rel, tag, correct, reason, details, prompt


def build_official_set(root: Path, metadata_file: Path, image_name=lambda i: f"{i:04d}.png") -> OfficialSet:
    taken = dict.fromkeys(PER_TAG, 0)
    lines = []
    for line in metadata_file.read_text(encoding="utf-8").splitlines():
        tag = json.loads(line)["tag"] if line.strip() else None
        if tag is not None and taken[tag] < PER_TAG[tag]:
            taken[tag] += 1
            lines.append(line)
    assert taken == PER_TAG
    images, det_dir = root / "images", root / "det"
    det_dir.mkdir(parents=True)
    det_lines, expected, seen = [], [], dict.fromkeys(PER_TAG, 0)
    for pi, line in enumerate(lines):
        meta = json.loads(line)
        tag = meta["tag"]
        flags = PATTERN[(seen[tag] + GENEVAL_TAGS.index(tag)) % len(PATTERN)]
        seen[tag] += 1
        names = [image_name(i) for i in range(2)]
        prompt_folder(images, pi, line, names)
        for ii, (name, good) in enumerate(zip(names, flags, strict=True)):
            rel = f"{pi:05d}/samples/{name}"
            dets, reason, details = design(meta, good)
            attach_mask(dets[0], MASK_KINDS[(pi + ii) % len(MASK_KINDS)], det_dir, f"{pi}_{ii}.png")
            det_lines.append(json.dumps({"filename": rel, "detections": dets}))
            expected.append({"rel": rel, "tag": tag, "prompt": meta["prompt"], "correct": good,
                             "reason": reason, "details": details, "line": line})
    detections = det_dir / "detections.jsonl"
    detections.write_text("\n".join(det_lines[::-1]) + "\n")  # any order: looked up by filename
    return OfficialSet(images, detections, lines, expected)


@pytest.fixture(scope="module")
def official_set(official_metadata_file, tmp_path_factory) -> OfficialSet:
    return build_official_set(tmp_path_factory.mktemp("official"), official_metadata_file)


def hand_summary(expected: list[dict]) -> dict:
    per_tag: dict[str, list[bool]] = {}
    per_prompt: dict[str, bool] = {}
    for e in expected:
        per_tag.setdefault(e["tag"], []).append(e["correct"])
        per_prompt[e["line"]] = per_prompt.get(e["line"], False) or e["correct"]
    scores = {t: sum(v) / len(v) for t, v in per_tag.items()}
    return {
        "overall": sum(scores.values()) / len(scores),
        "tags": {t: {"score": scores[t], "correct": sum(v), "images": len(v)} for t, v in per_tag.items()},
        "total_images": len(expected),
        "total_prompts": len(per_prompt),
        "pct_images_correct": 100 * sum(e["correct"] for e in expected) / len(expected),
        "pct_prompts_correct": 100 * sum(per_prompt.values()) / len(per_prompt),
    }


def check_rows(rows: list[dict], data: OfficialSet) -> None:
    assert len(rows) == len(data.expected)
    for row, exp in zip(rows, data.expected, strict=True):
        assert list(row) == FIELDS
        assert row["filename"] == str(data.images / exp["rel"]) and row["image"] == exp["rel"]
        assert row["tag"] == exp["tag"] and row["prompt"] == exp["prompt"]
        assert row["correct"] is exp["correct"], (row["filename"], row["reason"])
        assert row["reason"] == exp["reason"], row["filename"]
        assert isinstance(row["metadata"], str) and isinstance(row["details"], str)
        assert json.loads(row["metadata"]) == json.loads(exp["line"])
        assert row["metadata"] == json.dumps(json.loads(exp["line"]))
        assert json.loads(row["details"]) == exp["details"], row["filename"]


def test_official_metadata_with_precomputed_detections(official_set, tmp_path):
    out = tmp_path / "out"
    result = unirl("eval", "geneval", official_set.images, "--detector", "precomputed",
                   "--detections", official_set.detections, "--out", out)
    assert result.exit_code == 0, result.output
    assert "overall" in result.stdout
    check_rows(read_rows(out / "results.jsonl"), official_set)

    want = hand_summary(official_set.expected)
    got = json.loads((out / "summary.json").read_text())
    assert got["total_images"] == 60 and got["total_prompts"] == 30
    assert set(got["tags"]) == set(GENEVAL_TAGS)
    for key in ("overall", "total_images", "total_prompts", "pct_images_correct", "pct_prompts_correct"):
        assert got[key] == pytest.approx(want[key]), key
    for tag, t in want["tags"].items():
        assert got["tags"][tag]["correct"] == t["correct"] and got["tags"][tag]["images"] == t["images"]
        assert got["tags"][tag]["score"] == pytest.approx(t["score"])
    # the unweighted mean of per-tag means is not the pooled mean here
    assert want["overall"] != pytest.approx(want["pct_images_correct"] / 100)

    md = (out / "summary.md").read_text()
    for tag, t in want["tags"].items():
        assert f"| {tag} | {t['score']:.4f} | {t['correct']} / {t['images']} |" in md
    assert f"| **overall** | **{want['overall']:.4f}** | |" in md
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()


def test_five_digit_image_names_are_accepted(official_metadata_file, tmp_path):
    data = build_official_set(tmp_path, official_metadata_file, image_name=lambda i: f"{i:05d}.png")
    assert data.expected[0]["rel"] == "00000/samples/00000.png"
    result = unirl("eval", "geneval", data.images, "--detector", "precomputed",
                   "--detections", data.detections, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    check_rows(read_rows(tmp_path / "out" / "results.jsonl"), data)


def test_images_are_taken_in_numeric_order(tmp_path):
    images = tmp_path / "images"
    prompt_folder(images, 0, BENCH, names=("2.png", "10.png", "0001.png"))
    prompt_folder(images, 10, BENCH)
    prompt_folder(images, 2, BENCH)
    (images / "00002" / "samples" / "notes.txt").write_text("ignored")
    (images / "00002" / "samples" / "0000.jpg").write_bytes(b"ignored: not a .png name")
    rels = ["00000/samples/0001.png", "00000/samples/2.png", "00000/samples/10.png",
            "00002/samples/0000.png", "00010/samples/0000.png"]
    det = tmp_path / "det.jsonl"
    det.write_text("".join(json.dumps({"filename": r, "detections": []}) + "\n" for r in rels))
    result = unirl("eval", "geneval", images, "--detector", "precomputed", "--detections", det,
                   "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [r["filename"] for r in read_rows(tmp_path / "out" / "results.jsonl")] == [str(images / r) for r in rels]


# --------------------------------------------------------------------------------------------
# resume, refusals and errors on a rendered shapes set


@pytest.fixture
def counting_detector(monkeypatch):
    """A `shapes` detector that records the images it is asked about, registered for this test only."""
    reg = registry("detectors")
    monkeypatch.setattr(reg, "_entries", dict(reg._entries))

    @reg.register("test-counting-shapes")
    class CountingShapesDetector(ShapesDetector):
        """the shapes detector, counting its calls (tests)"""

        calls: list[str] = []

        def detect(self, images, filenames):
            CountingShapesDetector.calls.extend(filenames)
            return super().detect(images, filenames)

    return CountingShapesDetector


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_set")
    render_prompt_set(generate_prompts("shapes", 12, 4), root, images_per_prompt=2, seed=4)
    return root


def image_rels() -> list[str]:
    return [f"{i:05d}/samples/{j:04d}.png" for i in range(12) for j in range(2)]


def test_resume_after_a_torn_write_scores_only_the_missing_images(shapes_images, counting_detector, tmp_path):
    name = "test-counting-shapes"
    rels = image_rels()
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for out in (full, resumed):
        counting_detector.calls.clear()
        result = unirl("eval", "geneval", shapes_images, "--detector", name, "--out", out, "--batch-size", 5)
        assert result.exit_code == 0, result.output
        assert counting_detector.calls == rels
    reference = read_rows(full / "results.jsonl")
    assert [r["filename"] for r in reference] == [str(shapes_images / r) for r in rels]
    assert all(r["correct"] for r in reference)

    k = 9
    lines = (resumed / "results.jsonl").read_text().splitlines(keepends=True)
    torn = lines[k][: len(lines[k]) // 2]
    (resumed / "results.jsonl").write_text("".join(lines[:k]) + torn)
    counting_detector.calls.clear()
    result = unirl("eval", "geneval", shapes_images, "--detector", name, "--out", resumed, "--batch-size", 5)
    assert result.exit_code == 0, result.output
    assert counting_detector.calls == rels[k:]
    rows = read_rows(resumed / "results.jsonl")
    assert rows == reference
    assert len({r["filename"] for r in rows}) == len(rows) == len(rels)
    assert (resumed / "results.jsonl").read_text() == (full / "results.jsonl").read_text()
    assert json.loads((resumed / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())

    counting_detector.calls.clear()  # nothing missing: nothing detected, nothing changed
    result = unirl("eval", "geneval", shapes_images, "--detector", name, "--out", resumed)
    assert result.exit_code == 0, result.output
    assert counting_detector.calls == []
    assert read_rows(resumed / "results.jsonl") == reference


def test_resuming_with_other_rules_or_judges_is_refused(shapes_images, counting_detector, tmp_path):
    out = tmp_path / "out"
    assert unirl("eval", "geneval", shapes_images, "--out", out).exit_code == 0
    before = (out / "results.jsonl").read_bytes()
    config_before = (out / "config.yaml").read_bytes()
    counting_detector.calls.clear()

    line = assert_one_line_error(unirl("eval", "geneval", shapes_images, "--out", out, "rules.threshold=0.5"),
                                 out, "rules")
    assert "another --out" in line
    assert_one_line_error(unirl("eval", "geneval", shapes_images, "--out", out,
                                "rules.counting_threshold=0.8"), out, "rules")
    assert_one_line_error(unirl("eval", "geneval", shapes_images, "--out", out,
                                "--detector", "test-counting-shapes"), out, "detector")
    assert counting_detector.calls == []
    assert (out / "results.jsonl").read_bytes() == before
    assert (out / "config.yaml").read_bytes() == config_before
    # the same rules, spelled out, are the same run
    assert unirl("eval", "geneval", shapes_images, "--out", out, "rules.threshold=0.3").exit_code == 0
    assert (out / "results.jsonl").read_bytes() == before


def test_an_error_midway_keeps_the_rows_already_written(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 12, 4), images, images_per_prompt=2, seed=4)
    ref = tmp_path / "ref"
    assert unirl("eval", "geneval", images, "--out", ref).exit_code == 0
    reference = read_rows(ref / "results.jsonl")

    bad = images / "00002" / "samples" / "0001.png"  # the 6th image
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    out = tmp_path / "out"
    assert_one_line_error(unirl("eval", "geneval", images, "--out", out, "--batch-size", 1), bad)
    assert read_rows(out / "results.jsonl") == reference[:5]

    bad.write_bytes(good_bytes)
    assert unirl("eval", "geneval", images, "--out", out, "--batch-size", 1).exit_code == 0
    assert read_rows(out / "results.jsonl") == reference


def test_a_bad_input_after_a_complete_run_loses_nothing(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 6, 2), images, images_per_prompt=1, seed=2)
    out = tmp_path / "out"
    assert unirl("eval", "geneval", images, "--out", out).exit_code == 0
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    meta = prompt_folder(images, 6, '{"tag": "single_object", "include": [') / "metadata.jsonl"
    assert_one_line_error(unirl("eval", "geneval", images, "--out", out), f"{meta}:1")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved


# --------------------------------------------------------------------------------------------
# bad inputs: exit code 2 and one line that names the path


def _missing_metadata(root: Path):
    images = root / "images"
    blank_png(images / "00000" / "samples" / "0000.png")
    return [images], [images / "00000" / "metadata.jsonl", "missing"]


def _malformed_metadata(root: Path):
    images = root / "images"
    meta = prompt_folder(images, 0, "\n" + '{"tag": "single_object", "include": [{"class": ') / "metadata.jsonl"
    return [images], [f"{meta}:2", "malformed JSON"]


def _malformed_detections(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=("0000.png", "0001.png"))
    det = root / "det.jsonl"
    det.write_text(json.dumps({"filename": "00000/samples/0000.png", "detections": []}) + "\n"
                   + '{"filename": "00000/samples/0001.png", "detections": [\n')
    return [images, "--detector", "precomputed", "--detections", det], [f"{det}:2", "malformed JSON"]


def _unknown_class(root: Path):
    images = root / "images"
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    prompt_folder(images, 0, meta)
    return [images, "--detector", "shapes"], [images / "00000" / "metadata.jsonl", "'dog'", "'shapes'"]


def _jpeg_named_png(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=())
    path = images / "00000" / "samples" / "0000.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path, format="JPEG")
    return _precomputed(root, images, ["00000/samples/0000.png"]), [path, "JPEG"]


def _corrupt_png(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=("0000.png", "0001.png"))
    path = images / "00000" / "samples" / "0001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    return _precomputed(root, images, ["00000/samples/0000.png", "00000/samples/0001.png"]), [path]


def _garbage_png(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=())
    path = images / "00000" / "samples" / "0000.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return _precomputed(root, images, ["00000/samples/0000.png"]), [path]


def _empty_folder(root: Path):
    images = root / "images"
    images.mkdir()
    return [images], [images]


def _no_images(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=())
    return [images], [images / "00000" / "samples"]


def _not_a_folder(root: Path):
    return [root / "nowhere"], [root / "nowhere"]


def _detections_do_not_match(root: Path):
    images = root / "images"
    prompt_folder(images, 0, BENCH, names=("0000.png",))
    args = _precomputed(root, images, ["00000/samples/0001.png"])
    return args, [root / "det.jsonl", "do not match", "no line for '00000/samples/0000.png'"]


def _precomputed(root: Path, images: Path, rels: list[str]) -> list:
    det = root / "det.jsonl"
    det.write_text("".join(json.dumps({"filename": r, "detections": [BENCH_DET]}) + "\n" for r in rels))
    return [images, "--detector", "precomputed", "--detections", det]


BENCH_DET = {"class": "bench", "box": [1, 1, 20, 20], "score": 0.9, "color": "red"}


BAD_INPUTS = {f.__name__.strip("_"): f for f in (
    _missing_metadata, _malformed_metadata, _malformed_detections, _unknown_class, _jpeg_named_png,
    _corrupt_png, _garbage_png, _empty_folder, _no_images, _not_a_folder, _detections_do_not_match,
)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_path(case, tmp_path):
    args, names = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "out"
    assert_one_line_error(unirl("eval", "geneval", *args, "--out", out), *names)
    assert not (out / "results.jsonl").exists()  # every image sits in the one failing batch


def test_the_console_script_gives_the_same_one_line_error(unirl_cli, tmp_path):
    args, names = _jpeg_named_png(tmp_path)
    proc = unirl_cli("eval", "geneval", *args, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(str(n) in lines[0] for n in names)
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# sharding: two ranks on one folder give the single-process file


def test_two_ranks_give_the_single_process_results(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 7, 8), images, images_per_prompt=3, seed=8)  # 21 images
    single = tmp_path / "single"
    assert unirl("eval", "geneval", images, "--out", single).exit_code == 0

    sharded = tmp_path / "sharded"
    (rc0, out0, err0), (rc1, out1, err1) = launch_ranks(images, sharded)
    assert (rc0, rc1) == (0, 0), (err0, err1)
    assert "overall" in out0 and "overall" not in out1

    assert (sharded / "results.jsonl").read_text() == (single / "results.jsonl").read_text()
    assert len(read_rows(sharded / "results.jsonl")) == 21
    assert json.loads((sharded / "summary.json").read_text()) == json.loads((single / "summary.json").read_text())
    assert (sharded / "summary.md").read_text() == (single / "summary.md").read_text()
    leftovers = sorted(p.name for p in sharded.iterdir() if "rank" in p.name or p.suffix == ".tmp")
    assert leftovers == []


def launch_ranks(images: Path, out: Path, *extra: str) -> list[tuple[int, str, str]]:
    """Ranks 0 and 1 of 2, started together as separate processes: (exit code, stdout, stderr)."""
    code = "from unirl_kit.cli import main; main()"
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "NO_COLOR": "1", "COLUMNS": "200"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", code, "eval", "geneval", str(images), "--out", str(out),
             "rank_timeout_s=60", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outputs, strict=True)]


def test_other_rules_after_an_interrupted_sharded_run_are_refused(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 6, 2), images, images_per_prompt=2, seed=2)
    bad = images / "00002" / "samples" / "0000.png"  # the 5th image: rank 0's share
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:100])
    out = tmp_path / "out"
    (rc0, _, err0), (rc1, _, _) = launch_ranks(images, out, "--batch-size", "1")
    assert (rc0, rc1) == (2, 0) and str(bad) in err0
    assert (out / "results.rank0.jsonl").is_file() and not (out / "results.jsonl").exists()

    bad.write_bytes(good_bytes)
    (rc0, _, err0), _ = launch_ranks(images, out, "rules.max_objects=3")
    assert rc0 == 2, "rerun with other rules was accepted"
    assert "rules" in err0


def test_a_rank_without_images_marks_itself_done(tmp_path, monkeypatch):
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval

    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 1, 0), images, images_per_prompt=1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    assert run_geneval(GenevalConfig(images_dir=str(images), out=str(out), progress=False)) == {}
    assert (out / "rank1.done").is_file()


@pytest.fixture
def results_with_a_corrupt_middle_row(tmp_path) -> tuple[Path, Path, bytes]:
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 6, 2), images, images_per_prompt=1, seed=2)
    out = tmp_path / "out"
    assert unirl("eval", "geneval", images, "--out", out).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][:25] + "\n"
    (out / "results.jsonl").write_text("".join(lines))
    return images, out, (out / "results.jsonl").read_bytes()


def test_a_corrupt_row_in_the_middle_of_results_is_not_dropped(results_with_a_corrupt_middle_row):
    images, out, before = results_with_a_corrupt_middle_row
    result = unirl("eval", "geneval", images, "--out", out)
    assert result.exit_code != 0
    assert (out / "results.jsonl").read_bytes() == before


def test_a_corrupt_row_in_the_middle_of_results_is_a_one_line_error(results_with_a_corrupt_middle_row):
    images, out, _ = results_with_a_corrupt_middle_row
    assert_one_line_error(unirl("eval", "geneval", images, "--out", out), f"{out / 'results.jsonl'}:4")


def test_a_resume_spelling_the_images_folder_otherwise_says_how(shapes_images, tmp_path, monkeypatch):
    """results.jsonl names each image by the images_dir as given, so the same folder spelt otherwise
    cannot be mixed in; the message says which spelling resumes."""
    out = tmp_path / "out"
    monkeypatch.chdir(shapes_images.parent)
    assert unirl("eval", "geneval", shapes_images.name, "--out", out).exit_code == 0
    got = unirl("eval", "geneval", shapes_images, "--out", out)
    assert got.exit_code == 2 and f"give IMAGES_DIR as '{shapes_images.name}' from where it ran" in got.output
