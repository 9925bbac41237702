"""The shapes world: geometry, exact rendering + detection, controlled errors, determinism,
robustness to blur and colour noise, the colour classifier, and the world's vocabulary."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from unirl_kit.eval.geneval.colors.shapes import ShapesColorClassifier
from unirl_kit.eval.geneval.detectors.shapes import ShapesDetector
from unirl_kit.eval.geneval.layout import write_prompt_folder
from unirl_kit.eval.geneval.rules import RuleOptions, evaluate, keep_detections
from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval
from unirl_kit.prompts.generate import generate_prompts
from unirl_kit.types import GENEVAL_COLORS, GENEVAL_TAGS, InputError, PromptSpec, Requirement, Verdict
from unirl_kit.worlds.shapes.dataset import image_rng, render_prompt_set
from unirl_kit.worlds.shapes.geometry import box_mask, place_mask
from unirl_kit.worlds.shapes.render import ERRORS, error_applies, render_scene
from unirl_kit.worlds.shapes.vocab import BACKGROUND, COLORS, PALETTE, SHAPES

ODD_SIDES = tuple(range(5, 32, 2))
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
EIGHT = np.ones((3, 3), dtype=bool)

DETECTOR = ShapesDetector()
COLOR_CLASSIFIER = ShapesColorClassifier()
RULES = RuleOptions()


def judge(spec: PromptSpec, image: Image.Image) -> Verdict:
    """GenEval's verdict on one image with the shapes detector and colour classifier."""
    dets = DETECTOR.detect([image], ["image.png"])[0]
    kept = keep_detections(dets, spec.tag, RULES)
    return evaluate(spec, kept, lambda found, cls: COLOR_CLASSIFIER.classify(image, found, cls), RULES)


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur (radius 0.6) then per-channel Gaussian colour noise (sigma 8)."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=0.6)), dtype=np.float64)
    noisy = blurred + rng.normal(0.0, 8.0, blurred.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def objects_of(dets) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    return sorted((d.cls, d.color, tuple(int(v) for v in d.box)) for d in dets)


def truth_objects(path: Path) -> tuple[str | None, list[tuple[str, str, tuple[int, int, int, int]]]]:
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    return truth["error"], sorted((o["class"], o["color"], tuple(o["box"])) for o in truth["objects"])


def images_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/samples/*.png"))


# --------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_touches_its_box_and_is_one_8_connected_component(shape):
    for side in ODD_SIDES:
        mask = box_mask(shape, side, side)
        assert mask.shape == (side, side)
        assert mask[0].any() and mask[-1].any(), f"{shape} at side {side} misses the top or bottom edge"
        assert mask[:, 0].any() and mask[:, -1].any(), f"{shape} at side {side} misses the left or right edge"
        _, n = ndimage.label(mask, structure=EIGHT)
        assert n == 1, f"{shape} at side {side} has {n} 8-connected components"


def test_place_mask_draws_the_template_exactly_inside_its_box():
    for shape in SHAPES:
        full = place_mask(shape, (7, 3, 7 + 13, 3 + 13), (40, 30))
        assert full.shape == (30, 40)
        ys, xs = np.nonzero(full)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (7, 3, 20, 16)
        assert np.array_equal(full[3:16, 7:20], box_mask(shape, 13, 13))


@pytest.mark.parametrize("side", ODD_SIDES)
def test_no_two_shapes_share_a_template(side):
    masks = {s: box_mask(s, side, side) for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        assert not np.array_equal(masks[a], masks[b]), f"{a} and {b} are identical at side {side}"


def _template_iou(a: str, b: str, side: int) -> float:
    ma, mb = box_mask(a, side, side), box_mask(b, side, side)
    return float((ma & mb).sum() / (ma | mb).sum())


@pytest.mark.parametrize("side", [s for s in ODD_SIDES if s >= 11])
def test_template_iou_between_different_shapes_is_at_most_0_82(side):
    """The bound vocab.py states, at every side the renderer draws at 64 px (odd, >= 11)."""
    worst = max((_template_iou(a, b, side), a, b) for a, b in itertools.combinations(SHAPES, 2))
    assert worst[0] <= 0.82, f"side {side}: {worst[1]} vs {worst[2]} IoU {worst[0]:.3f}"


# --------------------------------------------------------------------------------------------
# clean renders: score 1.0 and the detector recovers the ground truth exactly

RENDER_SETS = [(seed, size) for seed in (0, 1, 2) for size in (64, 96)]


@pytest.fixture(scope="module")
def clean_sets(tmp_path_factory) -> dict[tuple[int, int], tuple[list[PromptSpec], Path]]:
    out = {}
    for seed, size in RENDER_SETS:
        specs = generate_prompts("shapes", 60, seed)
        folder = tmp_path_factory.mktemp(f"clean_s{seed}_{size}px")
        drawn = render_prompt_set(specs, folder, images_per_prompt=2, seed=seed, size=size)
        assert drawn == 2 * len(specs)
        out[seed, size] = (specs, folder)
    return out


@pytest.mark.parametrize("seed,size", RENDER_SETS)
def test_clean_render_scores_one_with_the_shapes_detector(clean_sets, seed, size, tmp_path):
    specs, folder = clean_sets[seed, size]
    assert {s.tag for s in specs} == set(GENEVAL_TAGS)
    summary = run_geneval(GenevalConfig(images_dir=str(folder), out=str(tmp_path / "ev"), progress=False))
    assert summary["overall"] == 1.0
    assert set(summary["tags"]) == set(GENEVAL_TAGS)
    assert summary["total_images"] == 2 * len(specs)
    assert summary["total_prompts"] == len(specs)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(specs)
    assert all(r["correct"] and r["reason"] == "" for r in rows)


@pytest.mark.parametrize("seed,size", RENDER_SETS)
def test_detector_recovers_exactly_the_ground_truth_objects(clean_sets, seed, size):
    specs, folder = clean_sets[seed, size]
    paths = images_of(folder)
    assert len(paths) == 2 * len(specs)
    for path in paths:
        spec = specs[int(path.parent.parent.name)]
        error, truth = truth_objects(path)
        assert error is None
        image = Image.open(path)
        assert image.size == (size, size)
        dets = DETECTOR.detect([image], [path.name])[0]
        assert objects_of(dets) == truth, path
        assert all(d.score == 1.0 for d in dets), path
        # the truth itself is the scene the prompt asks for
        assert sorted(o[0] for o in truth) == sorted(r.cls for r in spec.include for _ in range(r.count))
        for req in spec.include:
            if req.color is not None:
                assert [o[1] for o in truth if o[0] == req.cls] == [req.color] * req.count
        for cls, color, (x1, y1, x2, y2) in truth:
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert (x2 - x1) % 2 == 1 and (y2 - y1) % 2 == 1
            mask = np.zeros((size, size), dtype=bool)
            mask[y1:y2, x1:x2] = box_mask(cls, x2 - x1, y2 - y1)
            assert (np.asarray(image)[mask] == PALETTE[color]).all()


def test_clean_render_pixels_are_background_or_palette(clean_sets):
    allowed = {BACKGROUND, *PALETTE.values()}
    for path in images_of(clean_sets[0, 64][1])[:40]:
        pixels = {tuple(int(v) for v in p) for p in np.asarray(Image.open(path)).reshape(-1, 3)}
        assert pixels <= allowed, path


# --------------------------------------------------------------------------------------------
# controlled errors


def expected_reason(spec: PromptSpec, error: str, drawn: list[tuple[str, str, tuple]]) -> str:
    """The exact `reason` GenEval gives an image drawn with `error`."""
    last = spec.include[-1]
    if error == "count":
        n = last.count
        return f"expected {last.cls}<{n + 1}, found {n + 1}" if n < 4 else f"expected {last.cls}>={n}, found {n - 1}"
    if error == "color":
        req = [r for r in spec.include if r.color is not None][-1]
        (other,) = [color for cls, color, _ in drawn if cls == req.cls]
        assert other != req.color
        return f"expected {req.color} {req.cls}>={req.count}, found 0 {req.color}; and 1 {other}"
    if error == "relation":
        req = [r for r in spec.include if r.position is not None][-1]
        rel = req.position[0]
        return f"expected {req.cls} {rel} target, found {OPPOSITE[rel]} target"
    assert error == "missing"
    return f"expected {last.cls}>={last.count}, found 0"


@pytest.fixture(scope="module")
def error_specs() -> list[PromptSpec]:
    specs = generate_prompts("shapes", 60, 7)
    assert {s.tag for s in specs} == set(GENEVAL_TAGS)
    return specs


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("error", ERRORS)
def test_controlled_error_fails_with_the_matching_reason(error_specs, error, size):
    applied = 0
    for pi, spec in enumerate(error_specs):
        if not error_applies(spec, error):
            continue
        for ii in range(2):
            image, placed = render_scene(spec, image_rng(3, pi, ii), size, error)
            drawn = [(o.cls, o.color, o.box) for o in placed]
            verdict = judge(spec, image)
            assert not verdict.correct, (error, spec.prompt)
            assert verdict.reason == expected_reason(spec, error, drawn), (error, spec.prompt)
            applied += 1
    assert applied >= 10


def test_errors_apply_exactly_where_their_check_exists(error_specs):
    for spec in error_specs:
        assert error_applies(spec, "missing")
        assert error_applies(spec, "count") == (spec.tag == "counting")
        assert error_applies(spec, "color") == (spec.tag in ("colors", "color_attr"))
        assert error_applies(spec, "relation") == (spec.tag == "position")


@pytest.mark.parametrize("error", ["count", "color", "relation"])
def test_an_error_that_does_not_apply_raises_input_error(error_specs, error):
    refused = 0
    for pi, spec in enumerate(error_specs):
        if error_applies(spec, error):
            continue
        with pytest.raises(InputError, match=error):
            render_scene(spec, image_rng(0, pi, 0), 64, error)
        refused += 1
    assert refused >= 10


def test_unknown_error_kind_is_refused():
    spec = PromptSpec("single_object", "a photo of a circle", (Requirement("circle", 1),))
    with pytest.raises(InputError, match="'blur'"):
        render_scene(spec, image_rng(0, 0, 0), 64, "blur")


@pytest.mark.parametrize("error", ERRORS)
def test_render_set_with_error_records_it_and_the_evaluator_fails_exactly_those(error_specs, error, tmp_path):
    render_prompt_set(error_specs, tmp_path / "img", images_per_prompt=1, seed=11, error=error)
    run_geneval(GenevalConfig(images_dir=str(tmp_path / "img"), out=str(tmp_path / "ev"), progress=False))
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(error_specs)
    for pi, (spec, row) in enumerate(zip(error_specs, rows, strict=True)):
        path = tmp_path / "img" / f"{pi:05d}" / "samples" / "0000.png"
        assert row["filename"] == str(path)
        recorded, drawn = truth_objects(path)
        if error_applies(spec, error):
            assert recorded == error
            assert row["correct"] is False
            assert row["reason"] == expected_reason(spec, error, drawn)
        else:
            assert recorded is None
            assert row["correct"] is True and row["reason"] == ""


# --------------------------------------------------------------------------------------------
# determinism


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in images_of(folder)}


def test_same_seed_gives_byte_identical_pngs_and_truth(tmp_path):
    specs = generate_prompts("shapes", 24, 3)
    for name in ("a", "b"):
        render_prompt_set(specs, tmp_path / name, images_per_prompt=2, seed=5)
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert len(a) == 48 and a == b
    for rel in a:
        truth = Path(rel).with_suffix(".truth.json")
        assert (tmp_path / "a" / truth).read_bytes() == (tmp_path / "b" / truth).read_bytes()


def test_different_seed_gives_different_images(tmp_path):
    specs = generate_prompts("shapes", 24, 3)
    for seed in (5, 6):
        render_prompt_set(specs, tmp_path / str(seed), images_per_prompt=2, seed=seed)
    a, b = _pngs(tmp_path / "5"), _pngs(tmp_path / "6")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_each_image_has_its_own_generator():
    spec = PromptSpec("counting", "a photo of three circles", (Requirement("circle", 3),),
                      (Requirement("circle", 4),))
    first, objs = render_scene(spec, image_rng(9, 4, 1), 64)
    again, objs_again = render_scene(spec, image_rng(9, 4, 1), 64)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and objs == objs_again
    other, _ = render_scene(spec, image_rng(9, 4, 2), 64)
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_rerendering_into_the_same_folder_keeps_existing_images(tmp_path):
    specs = generate_prompts("shapes", 6, 0)
    assert render_prompt_set(specs, tmp_path, images_per_prompt=2, seed=0) == 12
    before = _pngs(tmp_path)
    (tmp_path / "00003" / "samples" / "0001.png").unlink()
    assert render_prompt_set(specs, tmp_path, images_per_prompt=2, seed=0) == 1
    assert _pngs(tmp_path) == before


# --------------------------------------------------------------------------------------------
# robustness: blur + colour noise (measured on this exact set before the world fix; thresholds still hold)
#   clean renders judged correct:   64 px 98.3% (236/240), 96 px 100% (240/240)
#   error renders still failing:    100% (103/103) at both sizes
# (measured on 2,400 images per size before the world fix of 13-21 px objects and the wider hourglass
# waist: 99.3% at 64 px, every miss a small white diamond; 100% at 96 px; not re-measured since)

ROBUST_MIN_CORRECT = {64: 0.97, 96: 0.98}


@pytest.mark.parametrize("size", [64, 96])
def test_verdicts_survive_blur_and_colour_noise(size):
    specs = generate_prompts("shapes", 120, 0)
    noise = np.random.default_rng(1234 + size)
    correct = total = 0
    for pi, spec in enumerate(specs):
        for ii in range(2):
            image, _ = render_scene(spec, image_rng(0, pi, ii), size)
            correct += judge(spec, degrade(image, noise)).correct
            total += 1
    rate = correct / total
    print(f"blur 0.6 + noise 8 at {size}px: {correct}/{total} clean renders judged correct ({rate:.4f})")
    assert rate >= ROBUST_MIN_CORRECT[size]


@pytest.mark.parametrize("size", [64, 96])
def test_controlled_errors_still_fail_under_blur_and_colour_noise(size):
    specs = generate_prompts("shapes", 60, 1)
    noise = np.random.default_rng(99 + size)
    failed = total = 0
    for pi, spec in enumerate(specs):
        for error in ERRORS:
            if error_applies(spec, error):
                image, _ = render_scene(spec, image_rng(2, pi, 0), size, error)
                failed += not judge(spec, degrade(image, noise)).correct
                total += 1
    print(f"blur 0.6 + noise 8 at {size}px: {failed}/{total} error renders still judged wrong")
    assert failed / total >= 0.98




@pytest.mark.parametrize("size", [64, 96])
def test_pixel_noise_is_not_an_object(size):
    from unirl_kit.worlds.shapes.analyze import detect_shapes

    rng = np.random.default_rng(size)
    for _ in range(20):
        assert detect_shapes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) == []


def test_decoded_random_tokens_score_near_zero():
    """What a policy drifting into noise draws: the shipped tokenizer's decoding of uniformly random tokens.
    Before the area and colour-purity rules these scored 0.25 on GenEval-shapes (single_object 0.67)."""
    import torch

    from unirl_kit.registry import registry

    backbone = registry("backbones").build("tiny-shapes", device="cpu")
    specs = generate_prompts("shapes", 200, 2)
    tokens = torch.randint(0, 512, (len(specs), 256), generator=torch.Generator().manual_seed(0))
    images = backbone.decode_tokens(tokens)
    correct = sum(judge(spec, image).correct for spec, image in zip(specs, images, strict=True))
    assert correct <= 2, correct  # measured 0 of 200; the old rules (min_area 8, no purity rule) gave 26

# --------------------------------------------------------------------------------------------
# colour classifier


def test_palette_is_part_of_genevals_colours_and_far_apart():
    assert set(COLORS) <= set(GENEVAL_COLORS)
    assert tuple(COLOR_CLASSIFIER.colors) == COLORS
    assert tuple(DETECTOR.classes) == SHAPES
    for a, b in itertools.combinations(COLORS, 2):
        assert np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])) >= 120, (a, b)
    for name, rgb in PALETTE.items():  # green is the closest to the grey background (107)
        assert np.linalg.norm(np.subtract(rgb, BACKGROUND)) >= 100, name


@pytest.mark.parametrize("shape", SHAPES)
def test_colour_classifier_names_each_palette_colour(shape):
    canvas = np.empty((48, 48 * len(COLORS), 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for i, color in enumerate(COLORS):
        canvas[place_mask(shape, (48 * i + 9, 9, 48 * i + 30, 30), (48 * len(COLORS), 48))] = PALETTE[color]
    image = Image.fromarray(canvas, "RGB")
    dets = sorted(DETECTOR.detect([image], ["x.png"])[0], key=lambda d: d.box[0])
    assert [d.cls for d in dets] == [shape] * len(COLORS)
    assert COLOR_CLASSIFIER.classify(image, dets, shape) == list(COLORS)
    for d in dets:  # without a mask it falls back to the box and ignores the background in it
        d.mask = None
    assert COLOR_CLASSIFIER.classify(image, dets, shape) == list(COLORS)


def test_colour_classifier_matches_truth_on_rendered_scenes(clean_sets):
    specs, folder = clean_sets[1, 64]
    for path in images_of(folder):
        image = Image.open(path)
        _, truth = truth_objects(path)
        dets = DETECTOR.detect([image], [path.name])[0]
        by_box = {tuple(int(v) for v in d.box): d for d in dets}
        for cls, color, box in truth:
            assert COLOR_CLASSIFIER.classify(image, [by_box[box]], cls) == [color], (path, box)


# --------------------------------------------------------------------------------------------
# vocabulary: classes and colours outside the world


@pytest.mark.parametrize("req,named", [
    (Requirement("dog", 1), "'dog'"),
    (Requirement("circle", 1, "orange"), "'orange'"),
    (Requirement("square", 1, "brown"), "'brown'"),
])
def test_classes_and_colours_outside_the_world_are_refused(req, named, tmp_path):
    spec = PromptSpec("colors" if req.color else "single_object", "a photo of something", (req,))
    with pytest.raises(InputError, match=named):
        render_scene(spec, image_rng(0, 0, 0), 64)
    good = PromptSpec("single_object", "a photo of a circle", (Requirement("circle", 1),))
    with pytest.raises(InputError, match=rf"prompt 1 .*{named}"):
        render_prompt_set([good, spec], tmp_path / "img", images_per_prompt=1)
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").rglob("*.png"))


def test_shapes_detector_refuses_prompts_outside_its_world(tmp_path):
    images = tmp_path / "img"
    spec = PromptSpec("colors", "a photo of an orange circle", (Requirement("circle", 1, "orange"),))
    folder = write_prompt_folder(images, 0, spec.to_json())
    Image.new("RGB", (64, 64), BACKGROUND).save(folder / "samples" / "0000.png")
    with pytest.raises(InputError, match=r"00000/metadata\.jsonl.*'orange'"):
        run_geneval(GenevalConfig(images_dir=str(images), out=str(tmp_path / "ev"), progress=False))
    assert not (tmp_path / "ev" / "results.jsonl").exists()
