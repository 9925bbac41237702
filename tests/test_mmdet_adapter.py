"""mmdet adapter. Default suite: the missing-mmdet error and the output conversion on fake results.
`nox -s mmdet` (its own venv): the packaged config end to end, and the mask2former detector's
pre/post-processing checked against mmcv's and mmdet's own functions."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unirl_kit.eval.geneval.detectors.mask2former import (
    MEAN,
    STD,
    instance_postprocess,
    packaged_class_names,
    preprocess,
    resize_bilinear_cv2,
)
from unirl_kit.eval.geneval.detectors.mmdet import MMDetDetector
from unirl_kit.registry import registry
from unirl_kit.types import InputError

HAS_MMDET = importlib.util.find_spec("mmdet") is not None
CONFIG = "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.skipif(HAS_MMDET, reason="mmdet is importable here")
def test_without_mmdet_the_error_carries_the_recipe():
    with pytest.raises(InputError) as info:
        registry("detectors").build("mmdet", config=CONFIG, checkpoint=None)
    message = str(info.value)
    assert "nox -s mmdet" in message and "mmdet==3.3.0" in message and "mmengine==0.10.7" in message
    assert "\n" not in message


def _bare_adapter() -> MMDetDetector:
    det = object.__new__(MMDetDetector)  # conversion only: no mmdet model needed
    det.classes = packaged_class_names()
    return det


def test_converts_mmdet3_pred_instances():
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, 1:3, 2:4] = True

    class Instances(SimpleNamespace):
        def __contains__(self, key: str) -> bool:
            return hasattr(self, key)

        def cpu(self) -> Instances:
            return self

    inst = Instances(bboxes=torch.tensor([[2.0, 1.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0]]),
                     scores=torch.tensor([0.9, 0.1]), labels=torch.tensor([16, 0]), masks=masks)
    dets = _bare_adapter()._convert(SimpleNamespace(pred_instances=inst))
    assert [(d.cls, d.box) for d in dets] == [("dog", (2.0, 1.0, 4.0, 3.0)), ("person", (0.0, 0.0, 0.0, 0.0))]
    assert dets[0].score == pytest.approx(0.9) and dets[0].mask.dtype == bool and dets[0].mask.sum() == 4


def test_converts_mmdet2_per_class_arrays():
    bbox = [np.zeros((0, 5), np.float32) for _ in range(80)]
    segm = [[] for _ in range(80)]
    bbox[2] = np.array([[1, 2, 3, 4, 0.8], [5, 6, 7, 8, 0.4]], np.float32)
    segm[2] = [np.ones((9, 9), bool), np.zeros((9, 9), bool)]
    dets = _bare_adapter()._convert((bbox, segm))
    assert [(d.cls, d.box, round(d.score, 3)) for d in dets] == [
        ("car", (1.0, 2.0, 3.0, 4.0), 0.8), ("car", (5.0, 6.0, 7.0, 8.0), 0.4)]
    assert dets[0].mask.all() and not dets[1].mask.any()
    assert [d.mask for d in _bare_adapter()._convert(bbox)] == [None, None]  # boxes only


@pytest.mark.mmdet
def test_packaged_config_with_random_weights_on_two_images():
    det = MMDetDetector(CONFIG, None, device="cpu")
    for step in det.model.cfg.test_dataloader.dataset.pipeline:  # a small scale: ~1 s instead of ~20 s an image
        if step.type == "Resize":
            step.scale = (128, 96)
    images = _images([(64, 48), (40, 56)])
    results = det.detect(images, ["a.png", "b.png"])
    assert det.classes == packaged_class_names() and det.default_color_classifier == "clip"
    assert len(results) == 2
    for image, dets in zip(images, results, strict=True):
        assert len(dets) == 100
        for d in dets:
            assert d.cls in det.classes and 0.0 <= d.score <= 1.0 and len(d.box) == 4
            assert d.mask.dtype == bool and d.mask.shape == (image.height, image.width)
            if d.mask.any():
                ys, xs = np.nonzero(d.mask)
                assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.mmdet
def test_resize_is_bit_exact_with_cv2():
    import cv2

    rng = np.random.default_rng(0)
    sizes = [(512, 512), (1024, 768), (48, 64), (333, 517), (1600, 1600), (7, 3)]
    sizes += [(int(rng.integers(1, 900)), int(rng.integers(1, 900))) for _ in range(10)]
    for h, w in sizes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        f = min(1333 / max(h, w), 800 / min(h, w))
        nw, nh = int(w * f + 0.5), int(h * f + 0.5)
        expected = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_bilinear_cv2(torch.from_numpy(image), nw, nh).numpy(), expected), (h, w)


@pytest.mark.mmdet
def test_preprocess_matches_mmcv_test_pipeline_of_mmdet2():
    """mmdet 2.x's test pipeline: imrescale (uint8, cv2 bilinear), imnormalize (BGR->RGB), impad_to_multiple."""
    import mmcv

    for image in _images([(512, 512), (64, 48), (517, 333), (800, 1400), (16, 16)], seed=3):
        bgr = np.asarray(image)[:, :, ::-1].copy()
        resized = mmcv.imrescale(bgr, (1333, 800), interpolation="bilinear", backend="cv2")
        normed = mmcv.imnormalize(resized.astype(np.float32), np.array(MEAN), np.array(STD), to_rgb=True)
        expected = mmcv.impad_to_multiple(normed, 32, pad_val=0)
        ours, shape = preprocess(image, (1333, 800), 32)
        assert shape == resized.shape[:2]
        assert torch.equal(ours, torch.from_numpy(expected).permute(2, 0, 1))  # bit-exact


@pytest.mark.mmdet
def test_postprocess_matches_mmdet_maskformer_fusion_head():
    from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead
    from mmdet.structures import DetDataSample

    head = MaskFormerFusionHead(num_things_classes=80, num_stuff_classes=0, test_cfg=dict(
        panoptic_on=False, semantic_on=False, instance_on=True, max_per_image=100))
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(1, 30, 81, generator=g) * 3
    low = torch.randn(1, 30, 24, 32, generator=g) * 2 - 1
    input_shape, img_shape, ori_shape = (96, 128), (90, 120), (45, 61)
    # Mask2FormerHead.predict upsamples to the batch input shape before the fusion head
    up = F.interpolate(low, size=input_shape, mode="bilinear", align_corners=False)
    sample = DetDataSample(metainfo=dict(img_shape=img_shape, ori_shape=ori_shape, batch_input_shape=input_shape))
    ref = head.predict(cls, up, [sample], rescale=True)[0]["ins_results"]
    ours = instance_postprocess(cls[0], low[0], input_shape, img_shape, ori_shape, 100)
    order = np.lexsort((-ref.scores.numpy(), ref.labels.numpy()))
    mine = sorted(ours, key=lambda t: (t[0], -t[1]))
    assert [t[0] for t in mine] == ref.labels.numpy()[order].tolist()
    assert np.allclose([t[1] for t in mine], ref.scores.numpy()[order], rtol=1e-5, atol=1e-7)
    assert [t[2] for t in mine] == [tuple(b) for b in ref.bboxes.numpy()[order].tolist()]
    assert all(np.array_equal(t[3], m) for t, m in zip(mine, ref.masks.numpy()[order], strict=True))
