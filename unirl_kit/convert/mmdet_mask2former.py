"""Convert an mmdet Mask2Former (Swin) checkpoint into a transformers `Mask2FormerForUniversalSegmentation` folder.

Why: GenEval's scores come from mmdet's Mask2Former Swin-S checkpoint, and running mmdet needs mmcv.
transformers has the same architecture, so the exact reference weights run with a plain pip install.
Strict by design: every source key is mapped or listed unused, every target is filled, shapes match;
anything else is an `InputError` that names the keys (the mapping: `mask2former_keys`).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unirl_kit.convert import mask2former_keys as keys
from unirl_kit.jsonl import sha256_file
from unirl_kit.types import InputError

# mmdet's test-time pipeline for this model (its config and GenEval's): keep-ratio resize into
# 1333x800, ImageNet mean/std on RGB, zero padding to a multiple of 32
TEST_SCALE = (1333, 800)
SIZE_DIVISOR = 32
NO_OBJECT_WEIGHT = 0.1  # mmdet's loss_cls class_weight for the "no object" class (training only)
DEFORMABLE_LEVELS, DEFORMABLE_POINTS = 3, 4  # fixed in transformers' pixel decoder


@dataclass
class Conversion:
    """A converted state dict with what it was made from."""

    state: dict[str, torch.Tensor]
    config: Any  # transformers.Mask2FormerConfig
    layout: str
    unused: list[str] = field(default_factory=list)


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an mmdet .pth; tensors only unless the user trusts the file's pickle."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{path}: is a folder; give the mmdet checkpoint file (.pth)")
    if not p.is_file():
        raise InputError(f"{path}: file not found; give the mmdet checkpoint (.pth)")
    try:
        if trust_pickle:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's loader raises anything on a foreign file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        first = lines[0][:200]
        found = [line for line in lines if "unsupported global" in line.lower()]
        if isinstance(exc, pickle.UnpicklingError) and found and not trust_pickle:
            raise InputError(f"{path}: holds pickled objects besides tensors ({found[0][:200]}); if you trust "
                             "the file, rerun with --trust-pickle") from None
        at = next((i for i, line in enumerate(lines) if line.lower().endswith("unpickler error:")), None)
        cause = lines[at + 1] if at is not None and at + 1 < len(lines) else None  # the line after says what
        first = cause[:200] if cause else first.split(" Re-running")[0]  # torch's own advice is not ours
        raise InputError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: no state dict of tensors in it; give an mmdet checkpoint (.pth)")
    meta = obj.get("meta", {}) if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


def convert_state_dict(state: Mapping[str, torch.Tensor], class_names: list[str] | None = None) -> Conversion:
    """mmdet 2.x or 3.x keys -> transformers keys and config, with every strictness check."""
    found = keys.layout(state)
    if found in ("unknown", "mixed"):
        raise InputError(f"checkpoint keys follow no single mmdet Mask2Former layout ({found}); expected "
                         "panoptic_head.* transformer layers named as in mmdet 2.x or 3.x")
    mm3 = {keys.rename_2x(k): v for k, v in state.items()} if found == "2.x" else dict(state)
    config = infer_config(mm3, class_names)
    mapped, problems = keys.to_hf(mm3)
    if problems["bad_unused"]:
        raise InputError(_named("unused keys hold unexpected values", problems["bad_unused"]))
    if problems["unmapped"]:
        raise InputError(_named("source keys not mapped", problems["unmapped"]))
    if problems["duplicate"]:
        raise InputError(_named("source keys mapped onto one target twice", problems["duplicate"]))
    unused = sorted(k for k in mm3 if keys.is_unused(k))
    return Conversion(mapped, config, found, unused)


def fill_model(conv: Conversion) -> Any:
    """The transformers model holding exactly the converted weights (strict on names and shapes)."""
    from transformers import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation(conv.config).eval()
    target = model.state_dict()
    derived = _derived(target)
    extra = sorted(set(conv.state) - set(target))
    missing = sorted(set(target) - set(conv.state) - set(derived))
    shapes = [f"{k} {tuple(v.shape)}->{tuple(target[k].shape)}" for k, v in conv.state.items()
              if k in target and v.shape != target[k].shape]
    if extra:
        raise InputError(_named("mapped keys the transformers model does not have", extra))
    if missing:
        raise InputError(_named("transformers weights not filled by the checkpoint", missing))
    if shapes:
        raise InputError(_named("shape mismatches (source->target)", shapes))
    full = {k: v.to(target[k].dtype) for k, v in {**conv.state, **derived}.items()}
    model.load_state_dict(full, strict=True)
    return model


def convert_checkpoint(checkpoint: str | Path, out: str | Path, trust_pickle: bool = False,
                       force: bool = False) -> Path:
    """Write `out/` (config.json, model.safetensors, preprocessor_config.json, conversion.json)."""
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; give a new folder for the converted model")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InputError(f"--out {out}: folder exists and is not empty; give a new folder or pass --force")
    state, meta = load_checkpoint(checkpoint, trust_pickle)
    try:
        conv = convert_state_dict(state, _meta_classes(meta))
    except InputError as exc:
        raise InputError(f"{checkpoint}: {exc}") from None
    model = fill_model(conv)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(conv.config.num_labels),
                                                                 indent=2) + "\n")
    source = Path(checkpoint).expanduser()
    record = {"source": source.name, "sha256": sha256_file(source), "mmdet_layout": conv.layout,
              "source_keys": len(state), "unused_source_keys": len(conv.unused),
              "mmdet_version": meta.get("mmdet_version"), "test_scale": list(TEST_SCALE),
              "size_divisor": SIZE_DIVISOR, "mapping": "docs/mmdet_conversion.md"}
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def preprocessor_config(num_labels: int) -> dict[str, Any]:
    """transformers' image-processor settings equal to mmdet's test-time resize/normalise/pad."""
    return {"image_processor_type": "Mask2FormerImageProcessor", "do_resize": True,
            "size": {"shortest_edge": TEST_SCALE[1], "longest_edge": TEST_SCALE[0]}, "resample": 2,
            "size_divisor": SIZE_DIVISOR, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_reduce_labels": False, "num_labels": num_labels}


def infer_config(mm3: Mapping[str, torch.Tensor], class_names: list[str] | None = None) -> Any:
    """The transformers config, read off the tensor shapes of a mmdet 3.x-layout state dict."""
    from transformers import Mask2FormerConfig, SwinConfig

    def get(key: str) -> torch.Tensor:
        if key not in mm3:
            raise InputError(f"checkpoint lacks {key}; is it an mmdet Mask2Former with a Swin backbone?")
        return mm3[key]

    def count(prefix: str) -> int:
        found = {int(k[len(prefix):].split(".")[0]) for k in mm3 if k.startswith(prefix)}
        return max(found) + 1 if found else 0

    proj = get("backbone.patch_embed.projection.weight")
    embed = proj.shape[0]
    depths = [count(f"backbone.stages.{s}.blocks.") for s in range(count("backbone.stages."))]
    if len(depths) != 4 or not all(depths):
        raise InputError(f"checkpoint has Swin stages with {depths} blocks; expected 4 stages")
    heads = [get(f"backbone.stages.{s}.blocks.0.attn.w_msa.relative_position_bias_table").shape[1] for s in range(4)]
    table = get("backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table").shape[0]
    window = (math.isqrt(table) + 1) // 2
    hidden_ffn = get("backbone.stages.0.blocks.0.ffn.layers.0.0.weight").shape[0]
    backbone = SwinConfig(
        image_size=224, patch_size=proj.shape[-1], num_channels=proj.shape[1], embed_dim=embed, depths=depths,
        num_heads=heads, window_size=window, mlp_ratio=hidden_ffn / embed,
        qkv_bias="backbone.stages.0.blocks.0.attn.w_msa.qkv.bias" in mm3, drop_path_rate=0.0,
        use_absolute_embeddings=False, out_features=["stage1", "stage2", "stage3", "stage4"])
    pd, td = "panoptic_head.pixel_decoder.", "panoptic_head.transformer_decoder."
    weights_out = get(pd + "encoder.layers.0.self_attn.attention_weights.weight").shape[0]
    num_heads, rest = divmod(weights_out, DEFORMABLE_LEVELS * DEFORMABLE_POINTS)
    if rest:
        raise InputError(f"pixel decoder attention_weights has {weights_out} rows; transformers needs "
                         f"heads x {DEFORMABLE_LEVELS} levels x {DEFORMABLE_POINTS} points")
    num_labels = get("panoptic_head.cls_embed.weight").shape[0] - 1
    names = class_names if class_names and len(class_names) == num_labels else _default_names(num_labels)
    return Mask2FormerConfig(
        backbone_config=backbone, num_labels=num_labels,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        feature_size=get(pd + "input_convs.0.conv.weight").shape[0],
        mask_feature_size=get(pd + "mask_feature.weight").shape[0],
        hidden_dim=get("panoptic_head.query_feat.weight").shape[1],
        encoder_feedforward_dim=get(pd + "encoder.layers.0.ffn.layers.0.0.weight").shape[0],
        encoder_layers=count(pd + "encoder.layers."), decoder_layers=count(td + "layers.") + 1,
        num_attention_heads=num_heads, dim_feedforward=get(td + "layers.0.ffn.layers.0.0.weight").shape[0],
        num_queries=get("panoptic_head.query_feat.weight").shape[0], no_object_weight=NO_OBJECT_WEIGHT,
        enforce_input_projection=any(k.startswith("panoptic_head.decoder_input_projs.") for k in mm3),
    )


def _derived(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Values of the target keys that have no source (see `mask2former_keys.DERIVED`)."""
    out = {}
    for key in keys.DERIVED:
        if key not in target:
            continue
        if key == "criterion.empty_weight":
            value = torch.ones_like(target[key])
            value[-1] = NO_OBJECT_WEIGHT
        else:
            value = torch.ones_like(target[key]) if key.endswith("weight") else torch.zeros_like(target[key])
        out[key] = value
    return out


def _meta_classes(meta: Mapping[str, Any]) -> list[str] | None:
    """Class names saved by mmdet: 2.x meta['CLASSES'], 3.x meta['dataset_meta']['classes']."""
    names = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and names else None


def _default_names(num_labels: int) -> list[str]:
    from unirl_kit.eval.geneval.detectors.mask2former import packaged_class_names

    return packaged_class_names() if num_labels == 80 else [f"class_{i}" for i in range(num_labels)]


def _numpy_globals() -> list[Any]:
    """numpy scalars and dtypes: plain data that mmdet's checkpoint meta may hold (e.g. a best score)."""
    import importlib

    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    found: list[Any] = [multiarray.scalar, np.dtype]
    found += [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return found


def _named(what: str, names: list[str], limit: int = 5) -> str:
    """One line: how many, and the first few names."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {what}: {', '.join(sorted(names)[:limit])}{more}"


