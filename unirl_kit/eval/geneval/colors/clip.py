"""`clip` colour classifier: GenEval's open_clip zero-shot colour check, step for step.

Reference (GenEval's evaluate_images.py + clip_benchmark): ViT-L-14 with OpenAI weights; three
templates per colour, each embedding L2-normalised, averaged, renormalised, cached per class; the
object's mask composited onto a #999999 canvas, cropped to its box, standard CLIP preprocessing;
logits = 100 x cosine; argmax. Batches of 16 crops; fp16 autocast on CUDA (clip_benchmark's amp).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from unirl_kit.types import GENEVAL_COLORS, Detection, InputError

log = logging.getLogger(__name__)

TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
BATCH_SIZE = 16  # the reference's DataLoader batch size
REFERENCE_MODEL = "ViT-L-14"


class ClipColorClassifier:
    """open_clip zero-shot colour over GenEval's templates, on the object composited onto grey and cropped.

    `model`: an open_clip model name, or the path of an open_clip model-config JSON. `pretrained`: a
    local weights file (.pt/.bin/.safetensors); None is random init (scores meaningless).
    `quick_gelu`: None picks QuickGELU for ViT-L-14, as OpenAI's weights (the reference) need;
    pass false for other ViT-L-14 weights.
    """

    def __init__(
        self, model: str = REFERENCE_MODEL, pretrained: str | None = None, device: str = "auto",
        bgcolor: str = "#999999", crop: bool = True, colors: list[str] | None = None,
        quick_gelu: bool | None = None,
    ) -> None:
        import open_clip

        self.colors: list[str] = list(colors) if colors is not None else list(GENEVAL_COLORS)
        if not self.colors or not all(isinstance(c, str) and c for c in self.colors):
            raise InputError(f"color_options.colors={colors!r}: expected a non-empty list of colour names")
        if isinstance(crop, str):  # the reference's option is the string '1' / '0'
            crop = crop.strip().lower() in ("1", "true", "yes")
        self.bgcolor, self.crop = bgcolor, bool(crop)
        self._background = None if bgcolor == "original" else _parse_color(bgcolor)
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if device == "auto" else device)
        name = _model_name(str(model))
        if pretrained is not None:
            weights = Path(pretrained).expanduser()
            if not weights.is_file():
                raise InputError(f"color_options.pretrained={pretrained}: weights file not found; give a "
                                 "local .pt/.bin/.safetensors file (GenEval uses OpenAI's ViT-L-14 weights)")
            pretrained = str(weights)
        else:
            log.warning("COLOUR CLASSIFIER HAS RANDOM WEIGHTS (color_options.pretrained not set): its "
                        "colours are meaningless; pass color_options.pretrained=FILE (OpenAI ViT-L-14)")
        if quick_gelu is None:
            quick_gelu = name == REFERENCE_MODEL
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device, force_quick_gelu=bool(quick_gelu))
        except RuntimeError as exc:
            raise InputError(f"color_options.pretrained={pretrained}: weights do not fit open_clip model "
                             f"{model!r} ({str(exc).splitlines()[0][:200]})") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self._text_cache: dict[str, torch.Tensor] = {}

    def _autocast(self) -> Any:
        # clip_benchmark runs under torch.cuda.amp.autocast(): fp16 on CUDA, a no-op on CPU
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def text_embeddings(self, cls: str) -> torch.Tensor:
        """D x len(colors): per colour, the templates' unit embeddings averaged, then renormalised."""
        if cls not in self._text_cache:
            columns = []
            with torch.no_grad(), self._autocast():
                for color in self.colors:
                    tokens = self.tokenizer([t.format(c=color, cls=cls) for t in TEMPLATES]).to(self.device)
                    mean = F.normalize(self.model.encode_text(tokens), dim=-1).mean(dim=0)
                    columns.append(mean / mean.norm())
            self._text_cache[cls] = torch.stack(columns, dim=1)
        return self._text_cache[cls]

    def object_image(self, image: Image.Image, detection: Detection) -> Image.Image:
        """The reference's crop: mask over the background canvas (unless bgcolor=original), box crop."""
        rgb = image.convert("RGB")
        if detection.mask is not None and self._background is not None:
            mask = np.asarray(detection.mask, dtype=bool)
            if mask.shape != (rgb.height, rgb.width):
                raise InputError(f"detection of {detection.cls!r}: mask is {mask.shape[0]}x{mask.shape[1]} "
                                 f"but the image is {rgb.height}x{rgb.width}; masks need the image's size")
            pixels = np.asarray(rgb)
            canvas = np.array(self._background, np.uint8)
            rgb = Image.fromarray(np.where(mask[..., None], pixels, canvas))
        if self.crop:
            cropped = rgb.crop(tuple(float(v) for v in detection.box))  # PIL rounds, as in the reference
            # an empty box (empty mask) would crash the reference; the whole image is used instead
            if cropped.width > 0 and cropped.height > 0:
                rgb = cropped
        return rgb

    def logits(self, image: Image.Image, detections: Sequence[Detection], cls: str) -> torch.Tensor:
        """N x len(colors): 100 x cosine between each object's image embedding and each colour."""
        weights = self.text_embeddings(cls)
        out = []
        for start in range(0, len(detections), BATCH_SIZE):
            chunk = detections[start:start + BATCH_SIZE]
            batch = [self.preprocess(self.object_image(image, d)) for d in chunk]
            with torch.no_grad(), self._autocast():
                features = F.normalize(self.model.encode_image(torch.stack(batch).to(self.device)), dim=-1)
                out.append((100.0 * features @ weights).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.colors))

    def classify(self, image: Image.Image, detections: Sequence[Detection], cls: str) -> list[str]:
        return [self.colors[i] for i in self.logits(image, detections, cls).argmax(dim=1).tolist()]


def _parse_color(value: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        raise InputError(f"color_options.bgcolor={value!r}: expected a colour like '#999999' "
                         "or 'original'") from None


def _model_name(model: str) -> str:
    """An open_clip model name; a config JSON is registered under its file stem."""
    import open_clip

    path = Path(model).expanduser()
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError(f"color_options.model={model}: config file not found; give an open_clip model "
                             "config JSON or a model name such as ViT-L-14")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"color_options.model={model}: not valid JSON ({exc})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
        if missing:
            raise InputError(f"color_options.model={model}: config lacks {', '.join(missing)}; give an "
                             "open_clip model config (embed_dim, vision_cfg, text_cfg at the top level)")
        existing = open_clip.get_model_config(path.stem)
        if existing is None:
            open_clip.add_model_config(path)
        elif existing != config:
            raise InputError(f"color_options.model={model}: {path.stem!r} is already an open_clip model with "
                             "another config; rename the JSON file")
        return path.stem
    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; or give a model config JSON path"
        raise InputError(f"color_options.model={model!r}: unknown open_clip model{hint}")
    return model
