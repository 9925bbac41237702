"""`mmdet` detector: an adapter to mmdet's own `init_detector` / `inference_detector`.

This is GenEval's reference detector run by mmdet itself, for users who have an mmcv build (its own
venv: mmcv has no wheels on PyPI). Handles mmdet 3.x (`DetDataSample.pred_instances`) and 2.x
(`(bbox_results, segm_results)` per class) outputs. Images go one at a time, as in the reference
(mmdet 2.x would pad a list of images to one batch shape, which changes detections).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.types import Detection, InputError

log = logging.getLogger(__name__)

RECIPE = ("run it in its own venv: `nox -s mmdet` builds one (python3.11: pip install torch==2.13.0 "
          "'setuptools<81' mmengine==0.10.7, then the mmcv 2.1.0 wheel, then pip install mmdet==3.3.0); "
          "or use --detector mask2former, which needs no mmcv")


class MMDetDetector(Detector):
    """mmdet's init_detector/inference_detector (GenEval's reference code path; needs mmcv)."""

    default_color_classifier = "clip"

    def __init__(self, config: str, checkpoint: str | None, device: str = "cpu",
                 class_names: str | None = None) -> None:
        try:
            from mmdet.apis import inference_detector, init_detector
        except ImportError as exc:
            raise InputError(f"detectors.mmdet: mmdet is not importable here ({exc}); {RECIPE}") from None
        self._inference_detector = inference_detector
        config_path = _resolve_config(str(config))
        if checkpoint is None:
            log.warning("MMDET DETECTOR HAS RANDOM WEIGHTS (no checkpoint): its detections are meaningless")
        elif not Path(checkpoint).expanduser().is_file():
            raise InputError(f"detector_options.checkpoint={checkpoint}: file not found; give the .pth "
                             "matching the config (GenEval: mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco)")
        ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser())
        self.model = init_detector(str(config_path), ckpt, device=device)
        self.classes: list[str] = _class_names(self.model, class_names)

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        out = []
        for image in images:
            # BGR, as mmdet's LoadImageFromFile would give it; the pipeline converts back to RGB
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            out.append(self._convert(self._inference_detector(self.model, bgr)))
        return out

    def _convert(self, result: Any) -> list[Detection]:
        if hasattr(result, "pred_instances"):  # mmdet 3.x
            inst = result.pred_instances.cpu()
            boxes, scores = inst.bboxes.numpy(), inst.scores.numpy()
            labels = inst.labels.numpy()
            masks = inst.masks.numpy() if "masks" in inst else None
            return [self._detection(int(labels[i]), boxes[i], scores[i], None if masks is None else masks[i])
                    for i in range(len(labels))]
        bbox, segm = result, None
        if isinstance(result, tuple):
            bbox, segm = result[0], (result[1] if len(result) > 1 else None)
        if isinstance(segm, tuple):  # (masks, mask scores) of some 2.x heads
            segm = segm[0]
        found = []
        for label, rows in enumerate(bbox):
            for j, row in enumerate(np.asarray(rows)):
                mask = None if segm is None else segm[label][j]
                found.append(self._detection(label, row[:4], row[4], mask))
        return found

    def _detection(self, label: int, box: Any, score: Any, mask: Any) -> Detection:
        if not 0 <= label < len(self.classes):
            raise InputError(f"mmdet returned label {label} but only {len(self.classes)} class names are "
                             "known; pass detector_options.class_names=FILE with one name per model class")
        mask_np = None if mask is None else np.asarray(mask).astype(bool)
        return Detection(self.classes[label], tuple(float(v) for v in box), float(score), mask_np)


def _resolve_config(config: str) -> Path:
    """A config path, or the file name of a config packaged with mmdet (under its .mim/configs)."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    import mmdet

    root = Path(mmdet.__file__).parent / ".mim" / "configs"
    name = path.name if path.suffix == ".py" else path.name + ".py"
    found = sorted(root.rglob(name)) if root.is_dir() else []
    if not found:
        raise InputError(f"detector_options.config={config}: not a file nor a config packaged with mmdet; "
                         "give the path of an mmdet config .py")
    return found[0]


def _class_names(model: Any, class_names: str | None) -> list[str]:
    """A given file, else GenEval's names for an 80-class model, else the model's own class names."""
    from unirl_kit.eval.geneval.detectors.mask2former import packaged_class_names, read_class_names

    meta = getattr(model, "dataset_meta", None) or {}
    own = list(meta.get("classes") or getattr(model, "CLASSES", None) or [])
    if class_names is not None:
        names = read_class_names(class_names)
        if own and len(names) != len(own):
            raise InputError(f"class_names={class_names}: {len(names)} names but the model has {len(own)} "
                             "classes; give one name per model class, in index order")
        return names
    if not own or len(own) == 80:
        return packaged_class_names()
    return [str(c) for c in own]
