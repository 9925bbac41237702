"""The key mapping between mmdet's Mask2Former (Swin backbone) and transformers' Mask2Former.

`RULES` is the table of docs/mmdet_conversion.md, and it is used both ways: `to_hf` (mmdet 3.x layout
-> transformers) and `to_mmdet3` (the inverse, which the tests use to make mmdet-layout state dicts
from small transformers models). Template placeholders: `{p}` is `weight` or `bias`; `{s}`, `{b}`,
`{n}` are integers; `{n+1}` / `{2*n}` are the same integer shifted / scaled; `{qkv}` is q, k or v.

mmdet 2.x (the layout of GenEval's checkpoint) differs from 3.x only inside the two transformers:
mmcv 1.x's `BaseTransformerLayer` keeps its attentions and FFNs in lists in `operation_order`
order, where mmdet 3.x names them. `RENAME_2X` turns a 2.x key into its 3.x name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

BB, HB = "backbone.", "model.pixel_level_module.encoder."
PD, HPD = "panoptic_head.pixel_decoder.", "model.pixel_level_module.decoder."
TD, HTD = "panoptic_head.transformer_decoder.", "model.transformer_module.decoder."
BLOCK, HBLOCK = BB + "stages.{s}.blocks.{b}.", HB + "swin.encoder.layers.{s}.blocks.{b}."


@dataclass(frozen=True)
class Rule:
    """One mmdet key template and its transformers counterpart; `kind` says how the tensor changes."""

    src: str
    dst: str
    kind: str = "copy"  # copy | qkv (one fused tensor <-> q, k, v) | unfold_reduction | unfold_norm


RULES: tuple[Rule, ...] = (
    # Swin backbone
    Rule(BB + "patch_embed.projection.{p}", HB + "swin.embeddings.patch_embeddings.projection.{p}"),
    Rule(BB + "patch_embed.norm.{p}", HB + "swin.embeddings.norm.{p}"),
    Rule(BLOCK + "norm1.{p}", HBLOCK + "layernorm_before.{p}"),
    Rule(BLOCK + "attn.w_msa.relative_position_bias_table",
         HBLOCK + "attention.relative_position_bias.relative_position_bias_table"),
    Rule(BLOCK + "attn.w_msa.qkv.{p}", HBLOCK + "attention.{qkv}_proj.{p}", "qkv"),
    Rule(BLOCK + "attn.w_msa.proj.{p}", HBLOCK + "attention.o_proj.{p}"),
    Rule(BLOCK + "norm2.{p}", HBLOCK + "layernorm_after.{p}"),
    Rule(BLOCK + "ffn.layers.0.0.{p}", HBLOCK + "mlp.fc1.{p}"),
    Rule(BLOCK + "ffn.layers.1.{p}", HBLOCK + "mlp.fc2.{p}"),
    Rule(BB + "stages.{s}.downsample.reduction.weight", HB + "swin.encoder.layers.{s}.downsample.reduction.weight",
         "unfold_reduction"),
    Rule(BB + "stages.{s}.downsample.norm.{p}", HB + "swin.encoder.layers.{s}.downsample.norm.{p}", "unfold_norm"),
    Rule(BB + "norm{n}.{p}", HB + "hidden_states_norms.stage{n+1}.{p}"),
    # pixel decoder (multi-scale deformable attention encoder + FPN level)
    Rule(PD + "input_convs.{n}.conv.{p}", HPD + "input_projections.{n}.0.{p}"),
    Rule(PD + "input_convs.{n}.gn.{p}", HPD + "input_projections.{n}.1.{p}"),
    Rule(PD + "encoder.layers.{n}.self_attn.sampling_offsets.{p}", HPD + "encoder.layers.{n}.self_attn.sampling_offsets.{p}"),
    Rule(PD + "encoder.layers.{n}.self_attn.attention_weights.{p}",
         HPD + "encoder.layers.{n}.self_attn.attention_weights.{p}"),
    Rule(PD + "encoder.layers.{n}.self_attn.value_proj.{p}", HPD + "encoder.layers.{n}.self_attn.value_proj.{p}"),
    Rule(PD + "encoder.layers.{n}.self_attn.output_proj.{p}", HPD + "encoder.layers.{n}.self_attn.output_proj.{p}"),
    Rule(PD + "encoder.layers.{n}.norms.0.{p}", HPD + "encoder.layers.{n}.self_attn_layer_norm.{p}"),
    Rule(PD + "encoder.layers.{n}.ffn.layers.0.0.{p}", HPD + "encoder.layers.{n}.fc1.{p}"),
    Rule(PD + "encoder.layers.{n}.ffn.layers.1.{p}", HPD + "encoder.layers.{n}.fc2.{p}"),
    Rule(PD + "encoder.layers.{n}.norms.1.{p}", HPD + "encoder.layers.{n}.final_layer_norm.{p}"),
    Rule(PD + "level_encoding.weight", HPD + "level_embed"),
    Rule(PD + "lateral_convs.{n}.conv.weight", HPD + "adapter_{n+1}.0.weight"),
    Rule(PD + "lateral_convs.{n}.gn.{p}", HPD + "adapter_{n+1}.1.{p}"),
    Rule(PD + "output_convs.{n}.conv.weight", HPD + "layer_{n+1}.0.weight"),
    Rule(PD + "output_convs.{n}.gn.{p}", HPD + "layer_{n+1}.1.{p}"),
    Rule(PD + "mask_feature.{p}", HPD + "mask_projection.{p}"),
    # masked-attention transformer decoder (mmdet order: cross-attn, norm, self-attn, norm, FFN, norm)
    Rule(TD + "layers.{n}.cross_attn.attn.in_proj_{p}", HTD + "layers.{n}.cross_attn.in_proj_{p}"),
    Rule(TD + "layers.{n}.cross_attn.attn.out_proj.{p}", HTD + "layers.{n}.cross_attn.out_proj.{p}"),
    Rule(TD + "layers.{n}.norms.0.{p}", HTD + "layers.{n}.cross_attn_layer_norm.{p}"),
    Rule(TD + "layers.{n}.self_attn.attn.in_proj_{p}", HTD + "layers.{n}.self_attn.{qkv}_proj.{p}", "qkv"),
    Rule(TD + "layers.{n}.self_attn.attn.out_proj.{p}", HTD + "layers.{n}.self_attn.out_proj.{p}"),
    Rule(TD + "layers.{n}.norms.1.{p}", HTD + "layers.{n}.self_attn_layer_norm.{p}"),
    Rule(TD + "layers.{n}.ffn.layers.0.0.{p}", HTD + "layers.{n}.fc1.{p}"),
    Rule(TD + "layers.{n}.ffn.layers.1.{p}", HTD + "layers.{n}.fc2.{p}"),
    Rule(TD + "layers.{n}.norms.2.{p}", HTD + "layers.{n}.final_layer_norm.{p}"),
    Rule(TD + "post_norm.{p}", HTD + "layernorm.{p}"),
    # queries, level embeddings, prediction heads
    Rule("panoptic_head.query_embed.weight", "model.transformer_module.queries_embedder.weight"),
    Rule("panoptic_head.query_feat.weight", "model.transformer_module.queries_features.weight"),
    Rule("panoptic_head.level_embed.weight", "model.transformer_module.level_embed.weight"),
    Rule("panoptic_head.decoder_input_projs.{n}.{p}", "model.transformer_module.input_projections.{n}.{p}"),
    Rule("panoptic_head.cls_embed.{p}", "class_predictor.{p}"),
    Rule("panoptic_head.mask_embed.{2*n}.{p}", HTD + "mask_predictor.mask_embedder.{n}.0.{p}"),
)

# source keys that have no target: Swin's index buffer (transformers recomputes it; checked to be the
# standard one) and mmdet 3.x's normalisation constants (the detector normalises; checked)
UNUSED: tuple[str, ...] = (BLOCK + "attn.w_msa.relative_position_index", "data_preprocessor.mean",
                           "data_preprocessor.std")
# target keys that have no source: the loss's class weights (training only; mmdet keeps them in its
# config: 1 per class, 0.1 for "no object") and SwinModel's final norm, which the backbone never applies
DERIVED: tuple[str, ...] = ("criterion.empty_weight", HB + "swin.layernorm.weight", HB + "swin.layernorm.bias")

# mmdet 2.x -> 3.x: the two transformers' list-indexed sub-modules get their 3.x names
RENAME_2X: tuple[tuple[str, str], ...] = (
    (PD + "encoder.layers.{n}.attentions.0.", PD + "encoder.layers.{n}.self_attn."),
    (PD + "encoder.layers.{n}.ffns.0.", PD + "encoder.layers.{n}.ffn."),
    (TD + "layers.{n}.attentions.0.", TD + "layers.{n}.cross_attn."),
    (TD + "layers.{n}.attentions.1.", TD + "layers.{n}.self_attn."),
    (TD + "layers.{n}.ffns.0.", TD + "layers.{n}.ffn."),
)

_FIELD = re.compile(r"\{(?:(\d+)\*)?([a-z]+)(?:\+(\d+))?\}")
_WORDS = {"p": "weight|bias", "qkv": "q|k|v"}


class _Template:
    """A key template compiled for matching (a regex) and filling (str.format-like, with arithmetic)."""

    def __init__(self, text: str, prefix_only: bool = False) -> None:
        self.text, self.fields = text, []
        parts, last = [], 0
        for m in _FIELD.finditer(text):
            parts.append(re.escape(text[last:m.start()]))
            name = m.group(2)
            parts.append(f"({_WORDS[name]})" if name in _WORDS else r"(\d+)")
            self.fields.append((name, int(m.group(1) or 1), int(m.group(3) or 0)))
            last = m.end()
        parts.append(re.escape(text[last:]))
        self.regex = re.compile("".join(parts) + ("" if prefix_only else "$"))

    def match(self, key: str) -> tuple[dict[str, int | str], int] | None:
        """The placeholder values and the matched length, or None."""
        m = self.regex.match(key)
        if m is None:
            return None
        bound: dict[str, int | str] = {}
        for (name, mul, add), raw in zip(self.fields, m.groups(), strict=True):
            value: int | str = raw
            if name not in _WORDS:
                shifted = int(raw) - add
                if shifted < 0 or shifted % mul:
                    return None
                value = shifted // mul
            if bound.setdefault(name, value) != value:
                return None
        return bound, m.end()

    def fill(self, bound: Mapping[str, int | str]) -> str:
        def one(m: re.Match) -> str:
            name = m.group(2)
            value = bound[name]
            return str(value) if name in _WORDS else str(int(m.group(1) or 1) * int(value) + int(m.group(3) or 0))

        return _FIELD.sub(one, self.text)


_COMPILED = [(_Template(r.src), _Template(r.dst), r) for r in RULES]
_UNUSED = [_Template(t) for t in UNUSED]
_RENAME = [(_Template(a, prefix_only=True), _Template(b)) for a, b in RENAME_2X]
_RENAME_BACK = [(_Template(b, prefix_only=True), _Template(a)) for a, b in RENAME_2X]


def is_unused(key: str) -> bool:
    return any(t.match(key) for t in _UNUSED)


def _rename(key: str, table: list) -> str:
    for pattern, target in table:
        found = pattern.match(key)
        if found:
            return target.fill(found[0]) + key[found[1]:]
    return key


def rename_2x(key: str) -> str:
    """The mmdet 3.x name of a mmdet 2.x key (unchanged when 2.x and 3.x agree)."""
    return _rename(key, _RENAME)


def rename_3x_to_2x(key: str) -> str:
    """The inverse of `rename_2x` (makes 2.x-layout state dicts for tests)."""
    return _rename(key, _RENAME_BACK)


def layout(keys: Iterable[str]) -> str:
    """Which transformer layout these mmdet keys follow: 2.x, 3.x, mixed or unknown."""
    keys = list(keys)
    old = any(rename_2x(k) != k for k in keys)
    new = any(rename_3x_to_2x(k) != k for k in keys)
    return {(True, False): "2.x", (False, True): "3.x", (True, True): "mixed"}.get((old, new), "unknown")


def unfold_to_hf(x: torch.Tensor, kind: str) -> torch.Tensor:
    """PatchMerging input order: mmdet's nn.Unfold (channel-major) -> Swin's [x0, x1, x2, x3] concat.

    Inverts mmdet's `swin_converter` (correct_unfold_reduction_order / correct_unfold_norm_order).
    """
    if kind == "unfold_reduction":
        out, inp = x.shape
        return x.reshape(out, inp // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3], :].reshape(out, inp)
    return x.reshape(x.shape[0] // 4, 4).transpose(0, 1)[[0, 2, 1, 3], :].reshape(-1)


def unfold_to_mmdet(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Swin's concat order -> mmdet's nn.Unfold order (mmdet's own `swin_converter` step)."""
    if kind == "unfold_reduction":
        out, inp = x.shape
        return x.reshape(out, 4, inp // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out, inp)
    return x.reshape(4, x.shape[0] // 4)[[0, 2, 1, 3], :].transpose(0, 1).reshape(-1)


def swin_relative_position_index(window: int) -> torch.Tensor:
    """The relative-position index of a window (Swin's definition), to check mmdet's buffer against."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def to_hf(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map a mmdet 3.x-layout state dict: (transformers tensors, problems by kind).

    Problems: `unmapped` (no rule, not listed unused), `duplicate` (two sources, one target),
    `bad_unused` (an unused key whose value is not the expected constant).
    """
    out: dict[str, torch.Tensor] = {}
    problems: dict[str, list[str]] = {"unmapped": [], "duplicate": [], "bad_unused": []}
    for key, value in state.items():
        if is_unused(key):
            if not _unused_ok(key, value):
                problems["bad_unused"].append(key)
            continue
        for src, dst, rule in _COMPILED:
            found = src.match(key)
            if found is None:
                continue
            bound = found[0]
            if rule.kind == "qkv":
                pieces = dict(zip("qkv", value.chunk(3, dim=0), strict=True))
                targets = {dst.fill({**bound, "qkv": name}): t for name, t in pieces.items()}
            elif rule.kind.startswith("unfold"):
                targets = {dst.fill(bound): unfold_to_hf(value, rule.kind)}
            else:
                targets = {dst.fill(bound): value}
            for name, tensor in targets.items():
                if name in out:
                    problems["duplicate"].append(key)
                out[name] = tensor.contiguous()
            break
        else:
            problems["unmapped"].append(key)
    return out, problems


def to_mmdet3(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_hf` for a transformers state dict (test support); derived keys are dropped."""
    out: dict[str, torch.Tensor] = {}
    derived = set(DERIVED)
    for key, value in state.items():
        if key in derived:
            continue
        for src, dst, rule in _COMPILED:
            found = dst.match(key)
            if found is None:
                continue
            bound = found[0]
            if rule.kind == "qkv":
                if bound["qkv"] != "q":
                    break
                parts = [state[dst.fill({**bound, "qkv": name})] for name in "qkv"]
                out[src.fill(bound)] = torch.cat(parts, dim=0)
            elif rule.kind.startswith("unfold"):
                out[src.fill(bound)] = unfold_to_mmdet(value, rule.kind)
            else:
                out[src.fill(bound)] = value.clone()
            if key.endswith("relative_position_bias_table"):
                window = (int(round(value.shape[0] ** 0.5)) + 1) // 2
                index_key = src.fill(bound).replace("relative_position_bias_table", "relative_position_index")
                out[index_key] = swin_relative_position_index(window)
            break
        else:
            raise KeyError(f"no rule maps transformers key {key!r} back to mmdet")
    return out


def _unused_ok(key: str, value: torch.Tensor) -> bool:
    """Unused keys are dropped only when they hold what the conversion assumes."""
    if key.endswith("relative_position_index"):
        side = int(round(value.shape[0] ** 0.5)) if value.dim() == 2 else 0
        return side * side == value.shape[0] and torch.equal(value.long(), swin_relative_position_index(side))
    from unirl_kit.eval.geneval.detectors.mask2former import MEAN, STD

    expected = torch.tensor(MEAN if key.endswith("mean") else STD)
    return value.numel() == 3 and torch.allclose(value.flatten().double(), expected.double(), atol=1e-3)
