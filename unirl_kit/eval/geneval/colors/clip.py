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
from dataclasses import dataclass
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
        self.colors: list[str] = list(colors) if colors is not None else list(GENEVAL_COLORS)
        if not self.colors or not all(isinstance(c, str) and c for c in self.colors):
            raise InputError(f"color_options.colors={colors!r}: expected a non-empty list of colour names")
        if isinstance(crop, str):  # the reference's option is the string '1' / '0'
            crop = crop.strip().lower() in ("1", "true", "yes")
        self.bgcolor, self.crop = bgcolor, bool(crop)
        self._background = None if bgcolor == "original" else _parse_color(bgcolor)
        if pretrained is None:
            log.warning("COLOUR CLASSIFIER HAS RANDOM WEIGHTS (color_options.pretrained not set): its "
                        "colours are meaningless; pass color_options.pretrained=FILE (OpenAI ViT-L-14)")
        loaded = load_open_clip(str(model), pretrained, device, quick_gelu, where="color_options")
        self.device, self.model, self.preprocess, self.tokenizer = (
            loaded.device, loaded.model, loaded.preprocess, loaded.tokenizer)
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


@dataclass
class OpenClip:
    """A loaded open_clip model with what using it takes (shared by the colour classifier and clip-score)."""

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device


def load_open_clip(model: str, pretrained: str | None, device: str = "auto", quick_gelu: bool | None = None,
                   where: str = "color_options") -> OpenClip:
    """An open_clip model in eval mode, never downloading: `pretrained` is a local weights file, an
    open_clip tag already in the local cache, or None (random init). `where` prefixes error messages.

    `quick_gelu`: None picks the tag's own setting, or for a file QuickGELU on ViT-L-14 (OpenAI's).
    """
    import open_clip

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if device == "auto" else device)
    name = _model_name(model, where)
    tag_quick_gelu = None
    if pretrained is not None:
        weights = Path(pretrained).expanduser()
        tag_cfg = {} if weights.is_file() else open_clip.get_pretrained_cfg(name, pretrained)
        if weights.is_file():
            pretrained = str(weights)
        elif tag_cfg:
            _check_cached(name, pretrained, tag_cfg, where)
            tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        else:
            raise InputError(f"{where}.pretrained={pretrained}: weights file not found; give a "
                             "local .pt/.bin/.safetensors file (GenEval uses OpenAI's ViT-L-14 weights)")
    if quick_gelu is None:
        quick_gelu = tag_quick_gelu if tag_quick_gelu is not None else name == REFERENCE_MODEL
    try:
        clip_model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=dev, force_quick_gelu=bool(quick_gelu))
    except RuntimeError as exc:
        raise InputError(f"{where}.pretrained={pretrained}: weights do not fit open_clip model "
                         f"{model!r} ({str(exc).splitlines()[0][:200]})") from None
    clip_model.eval()
    return OpenClip(name, clip_model, preprocess, open_clip.get_tokenizer(name), dev)


def _check_cached(name: str, tag: str, cfg: dict, where: str) -> None:
    """A tag's weights must already be in the Hugging Face cache: nothing is downloaded at run time."""
    from huggingface_hub import hf_hub_download

    repo, _, filename = str(cfg.get("hf_hub", "")).rpartition("/")
    filename = filename or "open_clip_pytorch_model.bin"  # open_clip's default name
    candidates = [filename]  # open_clip tries a .safetensors twin first
    if filename == "open_clip_pytorch_model.bin":
        candidates.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, str(Path(filename).with_suffix(".safetensors")))
    for candidate in candidates if repo else []:
        try:
            hf_hub_download(repo, candidate, local_files_only=True)
            return
        except Exception:  # not cached under this name
            continue
    raise InputError(f"{where}.pretrained={tag}: open_clip's {name}/{tag} weights are not in the local cache "
                     "and nothing is downloaded at run time; give a local weights file, or fetch them first "
                     f"(python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\")")


def _parse_color(value: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        raise InputError(f"color_options.bgcolor={value!r}: expected a colour like '#999999' "
                         "or 'original'") from None


def _model_name(model: str, where: str = "color_options") -> str:
    """An open_clip model name; a config JSON is registered under its file stem."""
    import open_clip

    path = Path(model).expanduser()
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError(f"{where}.model={model}: config file not found; give an open_clip model "
                             "config JSON or a model name such as ViT-L-14")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}.model={model}: not valid JSON ({exc})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
        if missing:
            raise InputError(f"{where}.model={model}: config lacks {', '.join(missing)}; give an "
                             "open_clip model config (embed_dim, vision_cfg, text_cfg at the top level)")
        existing = open_clip.get_model_config(path.stem)
        if existing is None:
            open_clip.add_model_config(path)
        elif existing != config:
            raise InputError(f"{where}.model={model}: {path.stem!r} is already an open_clip model with "
                             "another config; rename the JSON file")
        return path.stem
    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; or give a model config JSON path"
        raise InputError(f"{where}.model={model!r}: unknown open_clip model{hint}")
    return model
