"""CLIP colour classifier: GenEval's template math, its crops, and the tiny open_clip model end to end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from unirl_kit.eval.geneval.colors import ColorClassifier
from unirl_kit.eval.geneval.colors.clip import ClipColorClassifier
from unirl_kit.testing import save_tiny_clip
from unirl_kit.types import GENEVAL_COLORS, Detection, InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    config, weights = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return str(config), str(weights)


@pytest.fixture(scope="module")
def clf(tiny) -> ClipColorClassifier:
    return ClipColorClassifier(tiny[0], pretrained=tiny[1], device="cpu")


def _scene() -> tuple[Image.Image, Detection]:
    """A 40x30 image: red square on a blue field, plus a green pixel outside the mask but inside the box."""
    pixels = np.zeros((30, 40, 3), np.uint8)
    pixels[:] = (0, 0, 255)
    pixels[5:15, 10:22] = (255, 0, 0)
    pixels[16, 11] = (0, 255, 0)
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:22] = True
    return Image.fromarray(pixels), Detection("cup", (9.6, 4.5, 22.0, 17.0), 0.9, mask)


def _reference_crop(image: Image.Image, det: Detection, bgcolor: str = "#999", crop: bool = True) -> Image.Image:
    """GenEval's ImageCrops.__getitem__, verbatim in substance (PIL composite onto a blank canvas)."""
    image = image.convert("RGB")
    blank = image.copy() if bgcolor == "original" else Image.new("RGB", image.size, color=bgcolor)
    out = Image.composite(image, blank, Image.fromarray(det.mask)) if det.mask is not None else image
    return out.crop(det.box[:4]) if crop else out


def test_text_embeddings_average_the_normalised_templates_then_renormalise(clf):
    weights = clf.text_embeddings("fire hydrant")
    assert weights.shape == (16, len(GENEVAL_COLORS))
    for i, color in enumerate(GENEVAL_COLORS):
        texts = [f"a photo of a {color} fire hydrant", f"a photo of a {color}-colored fire hydrant",
                 f"a photo of a {color} object"]
        with torch.no_grad():
            unit = F.normalize(clf.model.encode_text(clf.tokenizer(texts)), dim=-1)
        expected = unit.mean(0) / unit.mean(0).norm()
        assert torch.allclose(weights[:, i], expected, atol=1e-6)
    assert torch.allclose(weights.norm(dim=0), torch.ones(len(GENEVAL_COLORS)), atol=1e-6)


def test_text_embeddings_are_cached_per_class(clf, monkeypatch):
    calls = []
    real = clf.tokenizer
    monkeypatch.setattr(clf, "tokenizer", lambda texts: calls.append(list(texts)) or real(texts))
    first = clf.text_embeddings("zebra")
    assert len(calls) == len(GENEVAL_COLORS)
    assert calls[0] == ["a photo of a red zebra", "a photo of a red-colored zebra", "a photo of a red object"]
    assert clf.text_embeddings("zebra") is first and len(calls) == len(GENEVAL_COLORS)
    clf.text_embeddings("bus")
    assert len(calls) == 2 * len(GENEVAL_COLORS)


@pytest.mark.parametrize(("bgcolor", "crop"), [("#999999", True), ("#999", False), ("original", True)])
def test_composite_and_crop_match_the_reference(tiny, clf, bgcolor, crop):
    image, det = _scene()
    ours = clf if (bgcolor, crop) == ("#999999", True) else ClipColorClassifier(
        tiny[0], pretrained=tiny[1], device="cpu", bgcolor=bgcolor, crop=crop)
    got = np.asarray(ours.object_image(image, det))
    assert np.array_equal(got, np.asarray(_reference_crop(image, det, bgcolor, crop)))
    if crop:
        assert got.shape == (13, 12, 3)  # PIL rounds the float box (9.6, 4.5, 22, 17) to (10, 4, 22, 17)
    if bgcolor != "original":
        assert tuple(got[-1, 1]) == (153, 153, 153) if crop else tuple(got[16, 11]) == (153, 153, 153)


def test_logits_are_100_times_cosine_on_the_standard_preprocessing(clf):
    steps = clf.preprocess.transforms
    assert isinstance(steps[0], transforms.Resize) and steps[0].size == 224
    assert steps[0].interpolation == transforms.InterpolationMode.BICUBIC
    assert isinstance(steps[1], transforms.CenterCrop) and tuple(steps[1].size) == (224, 224)
    image, det = _scene()
    logits = clf.logits(image, [det, det], "cup")
    with torch.no_grad():
        feature = F.normalize(clf.model.encode_image(clf.preprocess(_reference_crop(image, det))[None]), dim=-1)
    assert torch.allclose(logits, (100 * feature @ clf.text_embeddings("cup")).expand(2, -1), atol=1e-4)


def test_classify_end_to_end_returns_vocabulary_colours(clf):
    image, det = _scene()
    full = Detection("cup", (0.0, 0.0, 40.0, 30.0), 0.5, None)
    colors = clf.classify(image, [det, full, det], "cup")
    assert isinstance(clf, ColorClassifier)
    assert len(colors) == 3 and set(colors) <= set(GENEVAL_COLORS) and colors[0] == colors[2]
    assert clf.classify(image, [], "cup") == []


def test_custom_colour_vocabulary(tiny):
    clf = ClipColorClassifier(tiny[0], pretrained=tiny[1], device="cpu", colors=["teal", "mauve"])
    image, det = _scene()
    assert clf.text_embeddings("cup").shape == (16, 2)
    assert set(clf.classify(image, [det], "cup")) <= {"teal", "mauve"}


def test_missing_weights_file_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(InputError, match=r"color_options.pretrained=.*nope.safetensors: weights file not found"):
        ClipColorClassifier(tiny[0], pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(InputError, match="color_options.model=.*config file not found"):
        ClipColorClassifier(str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="unknown open_clip model"):
        ClipColorClassifier("ViT-L-15")
    with pytest.raises(InputError, match="bgcolor"):
        ClipColorClassifier(tiny[0], pretrained=tiny[1], bgcolor="not-a-colour")


def test_random_weights_warn_loudly(tiny, caplog):
    with caplog.at_level(logging.WARNING):
        ClipColorClassifier(tiny[0], device="cpu")
    assert "RANDOM WEIGHTS" in caplog.text and "meaningless" in caplog.text


def test_mask_of_another_size_is_rejected(clf):
    image, det = _scene()
    det.mask = np.ones((10, 10), bool)
    with pytest.raises(InputError, match="mask is 10x10 but the image is 30x40"):
        clf.classify(image, [det], "cup")


def test_quick_gelu_defaults_on_for_the_reference_vit_l_14(tiny, monkeypatch):
    import open_clip

    seen = {}

    class Stop(Exception):
        pass

    def fake(name, **kwargs):
        seen[name] = kwargs["force_quick_gelu"]
        raise Stop

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    for model, quick_gelu in (("ViT-L-14", None), ("ViT-B-32", None), ("ViT-L-14", False)):
        with pytest.raises(Stop):
            ClipColorClassifier(model, quick_gelu=quick_gelu)
        assert seen.pop(model) is (model == "ViT-L-14" and quick_gelu is None)
    monkeypatch.undo()
    clf = ClipColorClassifier(tiny[0], pretrained=tiny[1], quick_gelu=True)
    assert type(clf.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
