"""`mask2former` detector: transformers' Mask2Former run with mmdet's test-time pre/post-processing.

GenEval's reference is mmdet 2.x Mask2Former (Swin-S, COCO instances). transformers runs the same
architecture without mmcv, but its `post_process_instance_segmentation` differs from mmdet's
(docs/geneval.md), so this module re-does mmdet's steps itself:

- pre: `mmcv.imrescale` keep-ratio into `scale` with cv2 INTER_LINEAR on uint8 and `mmcv.imnormalize`
  (RGB, ImageNet mean/std), both emulated bit-exactly (cv2's fixed-point and mixed-precision
  arithmetic included), zero padding at the bottom/right to a multiple of `size_divisor`;
- post: `MaskFormerFusionHead.instance_postprocess` (top-k over query x class pairs, logit > 0 masks,
  score = class prob x mean mask sigmoid, box = mask extent with exclusive x2/y2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.types import Detection, InputError

log = logging.getLogger(__name__)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_MASK_CHUNK = 16  # queries upsampled at once: bounds memory at full resolution


def resolve_device(device: str) -> torch.device:
    """Device "auto" means CUDA when available, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def read_class_names(path: str | Path) -> list[str]:
    """One class name a line, in the detector's label index order."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"class_names={path}: file not found; give a text file with one class name a line")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"class_names={path}: file has no class names; write one name a line")
    return names


def packaged_class_names() -> list[str]:
    """GenEval's 80 COCO names (its object_names.txt), in the reference detector's index order."""
    return read_class_names(Path(__file__).resolve().parents[1] / "data" / "object_names.txt")


def rescale_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv.rescale_size: fit the long edge into max(scale) and the short edge into min(scale)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def padded_shape(width: int, height: int, scale: Sequence[int], divisor: int) -> tuple[int, int]:
    """(height, width) of the network input for an image of this size: rescaled, then padded."""
    new_w, new_h = rescale_size(width, height, scale)
    return math.ceil(new_h / divisor) * divisor, math.ceil(new_w / divisor) * divisor


def _linear_taps(src: int, dst: int, clamp: bool) -> tuple[torch.Tensor, ...]:
    """cv2's INTER_LINEAR source indices and 11-bit weights (cv2 clamps x taps but not y taps)."""
    pos = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (1.0 / (dst / src)) - 0.5).float()
    first = torch.floor(pos)
    frac = pos - first
    first = first.long()
    if clamp:
        low, high = first < 0, first >= src - 1
        frac[low | high] = 0.0
        first = torch.where(low, 0, torch.where(high, src - 1, first))
    w0 = torch.round((1.0 - frac) * 2048).long()  # saturate_cast<short>: round half to even
    return first.clamp(0, src - 1), (first + 1).clamp(0, src - 1), w0, 2048 - w0


def resize_bilinear_cv2(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """`cv2.resize(img, (width, height), interpolation=INTER_LINEAR)` of an HxWxC uint8 tensor.

    Follows OpenCV's fixed-point path (checked bit-exact against opencv-python): the horizontal pass
    sums exactly in int32; the vertical pass is ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16),
    rounded with (+2) >> 2. A float bilinear resize would differ by 1 level on ~10% of pixels.
    """
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.clone()
    x0, x1, a0, a1 = _linear_taps(src_w, width, clamp=True)
    y0, y1, b0, b1 = _linear_taps(src_h, height, clamp=False)
    pixels = image.to(torch.int32)
    rows = pixels[:, x0] * a0[:, None].int() + pixels[:, x1] * a1[:, None].int()
    top = ((rows[y0] >> 4) * b0[:, None, None].int()) >> 16
    bottom = ((rows[y1] >> 4) * b1[:, None, None].int()) >> 16
    return ((top + bottom + 2) >> 2).clamp(0, 255).to(torch.uint8)


def preprocess(
    image: Image.Image, scale: Sequence[int], divisor: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """mmdet's test pipeline: (3 x padH x padW float32 input, (resized height, resized width))."""
    rgb = torch.from_numpy(np.array(image.convert("RGB")))
    new_w, new_h = rescale_size(image.width, image.height, scale)
    resized = resize_bilinear_cv2(rgb, new_w, new_h).float()
    # mmcv.imnormalize (cv2): float32 subtract of the mean, then a multiply by 1/std in float64
    centred = resized - torch.tensor(MEAN, dtype=torch.float32)
    normed = (centred.double() * (1.0 / torch.tensor(STD, dtype=torch.float64))).float()
    pad_h, pad_w = padded_shape(image.width, image.height, scale, divisor)
    out = torch.zeros(3, pad_h, pad_w, dtype=torch.float32)
    out[:, :new_h, :new_w] = normed.permute(2, 0, 1)
    return out, (new_h, new_w)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """mmdet's mask2bbox: [x1, y1, x2 + 1, y2 + 1] of each NxHxW mask; zeros for an empty mask."""
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        xs, ys = torch.nonzero(cols[i]).flatten(), torch.nonzero(rows[i]).flatten()
        if len(xs) and len(ys):
            boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
    return boxes


def instance_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, input_shape: tuple[int, int],
    resized_shape: tuple[int, int], image_shape: tuple[int, int], max_per_image: int = 100,
) -> list[tuple[int, float, tuple[float, ...], np.ndarray]]:
    """(label, score, box, HxW bool mask) per kept (query, class) pair, by class probability.

    `class_logits` is Q x (C + 1) (last column: no object), `mask_logits` Q x h x w; shapes are
    (height, width) of the padded input, the resized image and the original image.
    """
    num_classes = class_logits.shape[1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1]
    # mmdet asks topk(sorted=False); the order is not used downstream (GenEval sorts by score)
    top_probs, top_idx = probs.flatten().topk(min(max_per_image, probs.numel()))
    queries, labels = top_idx // num_classes, top_idx % num_classes
    # each selected query's mask is computed once, however many labels it got
    unique = torch.unique(queries)
    mask_score: dict[int, float] = {}
    box: dict[int, tuple[float, ...]] = {}
    binary: dict[int, np.ndarray] = {}
    height, width = resized_shape
    for chunk in unique.split(_MASK_CHUNK):
        logits = F.interpolate(mask_logits[chunk].float()[None], size=input_shape, mode="bilinear",
                               align_corners=False)[0, :, :height, :width]
        logits = F.interpolate(logits[None], size=image_shape, mode="bilinear", align_corners=False)[0]
        masks = logits > 0
        weights = masks.float()
        scores = (logits.sigmoid() * weights).flatten(1).sum(1) / (weights.flatten(1).sum(1) + 1e-6)
        boxes = masks_to_boxes(masks).tolist()
        masks_np = masks.cpu().numpy()
        for j, q in enumerate(chunk.tolist()):
            mask_score[q], box[q], binary[q] = float(scores[j]), tuple(boxes[j]), masks_np[j]
    score = (top_probs * torch.tensor([mask_score[q] for q in queries.tolist()], device=top_probs.device))
    return [(int(lab), float(s), box[q], binary[q])
            for lab, s, q in zip(labels.tolist(), score.tolist(), queries.tolist(), strict=True)]


class Mask2FormerDetector(Detector):
    """Mask2Former (transformers weights) with mmdet's test-time pre/post-processing, batched."""

    default_color_classifier = "clip"

    def __init__(
        self, model: str, device: str = "auto", dtype: str = "float32", batch_size: int = 8,
        max_per_image: int = 100, class_names: str | None = None,
        scale: tuple[int, int] | list[int] = (1333, 800), size_divisor: int = 32,
    ) -> None:
        if dtype not in _DTYPES:
            raise InputError(f"detector_options.dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
        for name, value in (("batch_size", batch_size), ("max_per_image", max_per_image),
                            ("size_divisor", size_divisor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"detector_options.{name}={value!r}: expected a positive integer")
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(s, int) and s > 0 for s in scale)):
            raise InputError(f"detector_options.scale={scale!r}: expected two positive integers, "
                             "e.g. [1333, 800]")
        self.device = resolve_device(device)
        self.dtype = _DTYPES[dtype]
        self.batch_size, self.max_per_image = batch_size, max_per_image
        self.scale, self.size_divisor = (int(scale[0]), int(scale[1])), size_divisor
        self.model = _load_model(str(model), self.device, self.dtype)
        self.classes: list[str] = _class_names(self.model.config, class_names)

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        """Images sharing a padded input shape go through one forward (at most `batch_size`)."""
        results: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shape = padded_shape(image.width, image.height, self.scale, self.size_divisor)
            groups.setdefault(shape, []).append(i)
        for input_shape, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                inputs = [preprocess(images[i], self.scale, self.size_divisor) for i in chunk]
                pixels = torch.stack([x for x, _ in inputs]).to(self.device, self.dtype)
                with torch.inference_mode():
                    out = self.model(pixel_values=pixels)
                for j, i in enumerate(chunk):
                    found = instance_postprocess(
                        out.class_queries_logits[j], out.masks_queries_logits[j], input_shape,
                        inputs[j][1], (images[i].height, images[i].width), self.max_per_image,
                    )
                    results[i] = [Detection(self.classes[lab], b, s, m) for lab, s, b, m in found]
        return results


def _load_model(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A local save_pretrained directory (or hub id); wrong or partial weights fail loudly."""
    from transformers import AutoConfig, Mask2FormerForUniversalSegmentation

    path = Path(model).expanduser()
    if not path.exists() and (path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1):
        raise InputError(f"detector_options.model={model}: directory not found; give a Mask2Former "
                         "directory saved with save_pretrained (config.json + weights)")
    source = str(path) if path.exists() else model
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise InputError(f"detector_options.model={model}: cannot read a transformers config ({exc}); "
                         "give a directory saved with save_pretrained") from None
    if config.model_type != "mask2former":
        raise InputError(f"detector_options.model={model}: model_type is {config.model_type!r}, not "
                         "'mask2former'; give a Mask2FormerForUniversalSegmentation checkpoint")
    net, info = Mask2FormerForUniversalSegmentation.from_pretrained(
        source, config=config, dtype=dtype, output_loading_info=True)
    bad = sorted(info.get("missing_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]
    if bad:
        raise InputError(f"detector_options.model={model}: {len(bad)} weights missing or mis-shaped "
                         f"(first: {bad[0]}); the checkpoint does not match its config")
    if info.get("unexpected_keys"):
        log.warning("%s: %d unused weights in the checkpoint (first: %s)", model,
                    len(info["unexpected_keys"]), sorted(info["unexpected_keys"])[0])
    return net.to(device).eval()


def _class_names(config: Any, class_names: str | None) -> list[str]:
    """Names by label index: a given file, else GenEval's 80 names, else the config's id2label."""
    num_labels = int(config.num_labels)
    if class_names is not None:
        names = read_class_names(class_names)
        if len(names) != num_labels:
            raise InputError(f"class_names={class_names}: {len(names)} names but the model has "
                             f"num_labels={num_labels}; give one name per model class, in index order")
        return names
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    if num_labels == 80:
        names = packaged_class_names()
        own = [id2label.get(i, f"LABEL_{i}") for i in range(80)]
        differ = [i for i in range(80) if own[i].replace("_", " ").lower() != names[i]]
        if len(differ) > 10 and not all(name.startswith("LABEL_") for name in own):
            log.warning("%d of the model's 80 id2label names differ from GenEval's (first: %r at %d, GenEval "
                        "%r): check that its labels follow COCO's order, or pass class_names=FILE",
                        len(differ), own[differ[0]], differ[0], names[differ[0]])
        return names
    log.warning("model has %d classes, not COCO's 80: class names come from its config.id2label", num_labels)
    return [id2label.get(i, f"class_{i}") for i in range(num_labels)]
