"""Mask2Former detector: mmdet's pre/post-processing on hand-made inputs, and the tiny model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.eval.geneval.detectors.mask2former import (
    MEAN,
    STD,
    Mask2FormerDetector,
    instance_postprocess,
    packaged_class_names,
    padded_shape,
    preprocess,
    rescale_size,
    resize_bilinear_cv2,
)
from unirl_kit.testing import save_tiny_mask2former
from unirl_kit.types import InputError

SMALL = (128, 96)  # a small test scale keeps the tiny model's forwards fast



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_tiny_mask2former(tmp_path_factory.mktemp("m2f") / "model")


@pytest.fixture(scope="module")
def detector(tiny_dir) -> Mask2FormerDetector:
    return Mask2FormerDetector(str(tiny_dir), device="cpu", scale=SMALL, batch_size=8)


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _logits(rows: dict[int, dict[int, float]], num_queries: int, num_classes: int) -> torch.Tensor:
    """Class logits: -10 everywhere (no-object column 0) except the given (query, class) values."""
    out = torch.full((num_queries, num_classes + 1), -10.0)
    out[:, -1] = 0.0
    for q, values in rows.items():
        for c, v in values.items():
            out[q, c] = v
    return out


def test_topk_runs_over_query_class_pairs_so_one_query_gives_two_labels():
    cls = _logits({0: {1: 5.0, 2: 4.9}, 1: {3: 4.0}}, num_queries=3, num_classes=4)
    masks = torch.full((3, 8, 8), -3.0)
    masks[0, 2:5, 1:6] = 2.0
    masks[1, 0:2, 0:2] = 1.0
    found = instance_postprocess(cls, masks, (8, 8), (8, 8), (8, 8), max_per_image=3)
    assert [lab for lab, *_ in found] == [3, 1, 2]  # by class probability: ~0.98, ~0.52, ~0.47
    (_, _, box_a, mask_a), (_, _, box_b, mask_b) = found[1], found[2]
    assert box_a == box_b == (1.0, 2.0, 6.0, 5.0)  # x2/y2 exclusive: mask spans cols 1..5, rows 2..4
    assert mask_a is mask_b and mask_a.dtype == bool and mask_a.shape == (8, 8)
    assert found[0][2] == (0.0, 0.0, 2.0, 2.0)


def test_score_is_class_prob_times_mean_sigmoid_inside_the_strictly_positive_mask():
    cls = _logits({0: {0: 3.0}}, num_queries=1, num_classes=2)
    masks = torch.full((1, 6, 6), -4.0)
    masks[0, 1:3, 1:4] = torch.tensor([[0.5, 1.0, 2.0], [3.0, 0.0, 1.5]])  # the exact 0.0 stays out
    (label, score, box, mask), *_ = instance_postprocess(cls, masks, (6, 6), (6, 6), (6, 6), max_per_image=1)
    inside = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5])
    prob = cls.softmax(-1)[0, 0]
    expected = prob * inside.sigmoid().sum() / (len(inside) + 1e-6)
    assert label == 0 and score == pytest.approx(float(expected), rel=1e-6)
    assert mask.sum() == 5 and not mask[2, 2]
    assert box == (1.0, 1.0, 4.0, 3.0)


def test_empty_mask_gives_zero_box_and_zero_score():
    cls = _logits({0: {0: 9.0}}, num_queries=1, num_classes=1)
    (_, score, box, mask), = instance_postprocess(cls, torch.full((1, 4, 4), -1.0), (4, 4), (4, 4), (4, 4), 1)
    assert box == (0.0, 0.0, 0.0, 0.0) and score == 0.0 and not mask.any()


def test_padding_is_cropped_before_resizing_to_the_original_size():
    cls = _logits({0: {0: 9.0}}, num_queries=1, num_classes=1)
    masks = torch.full((1, 16, 16), -1.0)
    masks[0, 12:, :] = masks[0, :, 8:] = 50.0  # only the padded area is "on"
    (_, score, box, mask), = instance_postprocess(cls, masks, (16, 16), (12, 8), (24, 16), 1)
    assert mask.shape == (24, 16) and not mask.any() and score == 0.0


def test_max_per_image_caps_pairs_and_results_sort_by_class_probability():
    cls = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    found = instance_postprocess(cls, torch.randn(5, 4, 4), (4, 4), (4, 4), (4, 4), max_per_image=7)
    probs = cls.softmax(-1)[:, :-1].flatten().sort(descending=True).values[:7]
    assert len(found) == 7
    assert len(instance_postprocess(cls, torch.randn(5, 4, 4), (4, 4), (4, 4), (4, 4), 100)) == 15
    assert all(s <= float(p) + 1e-7 for (_, s, _, _), p in zip(found, probs, strict=True))


@pytest.mark.parametrize(("size", "resized", "padded"), [
    ((512, 512), (800, 800), (800, 800)),
    ((1024, 1024), (800, 800), (800, 800)),
    ((640, 480), (1067, 800), (800, 1088)),
    ((48, 64), (800, 1067), (1088, 800)),
    ((2000, 500), (1333, 333), (352, 1344)),
])
def test_keep_ratio_rescale_and_pad_sizes(size, resized, padded):
    assert rescale_size(*size, (1333, 800)) == resized
    assert padded_shape(*size, (1333, 800), 32) == padded


def test_preprocess_normalises_rgb_and_pads_with_zero():
    image = Image.new("RGB", (10, 6), (255, 0, 128))
    pixels, resized = preprocess(image, (20, 12), 8)
    assert resized == (12, 20) and pixels.shape == (3, 16, 24)
    rgb = (255, 0, 128)
    expected = [float(np.float32(v) - np.float32(m)) * (1.0 / s) for v, m, s in zip(rgb, MEAN, STD, strict=True)]
    assert torch.equal(pixels[:, :12, :20], torch.tensor(expected).view(3, 1, 1).expand(3, 12, 20))
    assert pixels[:, 12:].abs().sum() == 0 and pixels[:, :, 20:].abs().sum() == 0


def test_resize_is_bit_exact_with_cv2_fixed_point():
    """Golden values from cv2.resize(INTER_LINEAR) (OpenCV 4.8.1 and 5.0.0 agree); a float
    bilinear resize rounded to uint8 differs from them in 30 of these 105 values."""
    i, j, c = np.meshgrid(np.arange(3), np.arange(4), np.arange(3), indexing="ij")
    image = torch.from_numpy(((i * 37 + j * 91 + c * 53) % 256).astype(np.uint8))
    expected = [
        [[0, 32, 84, 136, 170, 76, 17], [15, 47, 99, 151, 185, 91, 32], [37, 69, 122, 174, 207, 113, 54],
         [59, 92, 144, 119, 87, 80, 76], [74, 106, 158, 82, 6, 58, 91]],
        [[53, 85, 137, 189, 223, 129, 70], [68, 100, 152, 153, 143, 107, 85], [90, 122, 175, 99, 22, 75, 107],
         [112, 144, 197, 121, 44, 97, 129], [127, 159, 211, 135, 59, 111, 144]],
        [[106, 138, 190, 114, 38, 90, 123], [121, 153, 205, 129, 53, 105, 138], [143, 175, 228, 152, 75, 128, 160],
         [165, 143, 107, 97, 98, 149, 182], [180, 121, 27, 60, 112, 164, 197]],
    ]
    out = resize_bilinear_cv2(image, 7, 5)
    assert out.dtype == torch.uint8 and out.permute(2, 0, 1).tolist() == expected


def test_batched_equals_one_at_a_time(detector):
    # (64,48) and (60,45) share a padded shape; (48,64) and (30,70) do not
    images = _images([(64, 48), (48, 64), (60, 45), (30, 70), (64, 48)])
    batched = detector.detect(images, [f"{i}.png" for i in range(len(images))])
    for image, dets in zip(images, batched, strict=True):
        (alone,) = detector.detect([image], ["x.png"])
        assert [(d.cls, d.box) for d in dets] == [(d.cls, d.box) for d in alone]
        assert np.allclose([d.score for d in dets], [d.score for d in alone], rtol=1e-5, atol=1e-7)
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(dets, alone, strict=True))


def test_detection_lists_are_well_formed(detector):
    images = _images([(64, 48), (37, 53)], seed=1)
    results = detector.detect(images, ["a.png", "b.png"])
    assert isinstance(detector, Detector) and detector.default_color_classifier == "clip"
    assert detector.classes == packaged_class_names() and len(detector.classes) == 80
    assert len(results) == 2
    for image, dets in zip(images, results, strict=True):
        assert len(dets) == 100  # 10 queries x 80 classes, top 100 pairs
        for d in dets:
            assert d.cls in detector.classes and 0.0 <= d.score <= 1.0
            assert d.mask.dtype == bool and d.mask.shape == (image.height, image.width)
            if d.mask.any():
                ys, xs = np.nonzero(d.mask)
                assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            else:
                assert d.box == (0.0, 0.0, 0.0, 0.0)


def test_bfloat16_and_max_per_image(tiny_dir):
    det = Mask2FormerDetector(str(tiny_dir), dtype="bfloat16", scale=SMALL, max_per_image=5)
    (dets,) = det.detect(_images([(40, 30)]), ["a.png"])
    assert len(dets) == 5 and all(isinstance(d.score, float) for d in dets)


def test_class_names_file_and_id2label(tmp_path):
    model = save_tiny_mask2former(tmp_path / "m3", num_labels=3)
    assert Mask2FormerDetector(str(model), scale=SMALL).classes == packaged_class_names()[:3]
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    assert Mask2FormerDetector(str(model), scale=SMALL, class_names=str(names)).classes == ["cat", "dog", "bird"]
    names.write_text("cat\ndog\n")
    with pytest.raises(InputError, match="2 names but the model has num_labels=3"):
        Mask2FormerDetector(str(model), class_names=str(names))


def test_bad_options_fail_with_one_clear_line(tmp_path, tiny_dir):
    with pytest.raises(InputError, match="detector_options.model=.*directory not found"):
        Mask2FormerDetector(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="detector_options.dtype"):
        Mask2FormerDetector(str(tiny_dir), dtype="float16")
    with pytest.raises(InputError, match="detector_options.scale"):
        Mask2FormerDetector(str(tiny_dir), scale=[1333])
    with pytest.raises(InputError, match="detector_options.batch_size"):
        Mask2FormerDetector(str(tiny_dir), batch_size=0)


def test_cli_end_to_end_with_tiny_mask2former_and_clip(tmp_path, tiny_dir, monkeypatch):
    from typer.testing import CliRunner

    from unirl_kit.cli import app
    from unirl_kit.testing import save_tiny_clip

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config, weights = save_tiny_clip(tmp_path / "clip")
    images = _images([(64, 48), (48, 64)], seed=5)
    det = Mask2FormerDetector(str(tiny_dir), scale=SMALL)
    top = next(d.cls for d in det.detect(images[:1], ["x"])[0] if d.score > 0)  # kept at threshold 0
    specs = [{"tag": "colors", "include": [{"class": top, "count": 1, "color": "red"}], "prompt": f"a red {top}"},
             {"tag": "single_object", "include": [{"class": "zebra", "count": 1}], "prompt": "a zebra"}]
    for i, (spec, image) in enumerate(zip(specs, images, strict=True)):
        (tmp_path / "imgs" / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / "imgs" / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(spec) + "\n")
        image.save(tmp_path / "imgs" / f"{i:05d}" / "samples" / "0000.png")
    result = CliRunner().invoke(app, [
        "eval", "geneval", str(tmp_path / "imgs"), "--detector", "mask2former", "--color-classifier", "clip",
        "--out", str(tmp_path / "out"), f"detector_options.model={tiny_dir}", "detector_options.scale=[128,96]",
        f"color_options.model={config}", f"color_options.pretrained={weights}", "rules.threshold=0.0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in rows] == ["colors", "single_object"]
    assert top in json.loads(rows[0]["details"])  # kept at threshold 0, then judged by the colour classifier
    assert rows[0]["correct"] or "expected red" in rows[0]["reason"]
    assert (tmp_path / "out" / "summary.json").is_file()


def test_an_80_class_model_with_other_label_names_warns(caplog):
    from types import SimpleNamespace

    from unirl_kit.eval.geneval.detectors.mask2former import _class_names

    shuffled = SimpleNamespace(num_labels=80, id2label={i: n for i, n in enumerate(packaged_class_names()[::-1])})
    with caplog.at_level("WARNING"):
        assert _class_names(shuffled, None) == packaged_class_names()
    assert "id2label names differ from GenEval's" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _class_names(SimpleNamespace(num_labels=80, id2label={i: f"LABEL_{i}" for i in range(80)}), None)
    assert caplog.text == ""
