"""A lean one-token decode step for Llama-family Janus text models (the image sampler's per-token loop).

Why: one call of transformers' `LlamaModel.forward` for a single new token spends most of its time in
Python (mask creation, decorators, output capture, per-layer module calls with keyword arguments); for
small models that is several times the cost of the matmuls. This step runs each decoder layer straight
from its submodules' weights, with the operations of the full forward in the same order and dtypes
(RMSNorm, projections, rotary, attention over the filled KV prefix, gated MLP, final norm), so results
match it to rounding. Only the q/k/v and gate/up weights are concatenated (once per sampling call),
which turns five matmuls per layer into two; that costs a temporary copy of those weights.

The KV cache is the prefill's `_BufferLayer` buffers ([R, kv_heads, capacity, head_dim]): the prefill
runs the normal forward and fills them; each step writes its key and value at the next slot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEAN_MODEL_TYPES = ("llama",)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up concatenated along the output dimension."""

    norm1: torch.Tensor
    eps1: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    eps2: float
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]


def _cat_bias(linears: list[nn.Linear]) -> torch.Tensor | None:
    return None if linears[0].bias is None else torch.cat([m.bias for m in linears])


def _layer_weights(layer: nn.Module) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    gate_up = [mlp.gate_proj, mlp.up_proj]
    return _Layer(
        layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
        torch.cat([m.weight for m in qkv]), _cat_bias(qkv), attn.o_proj.weight, attn.o_proj.bias,
        layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
        torch.cat([m.weight for m in gate_up]), _cat_bias(gate_up), mlp.down_proj.weight, mlp.down_proj.bias,
        mlp.act_fn,
    )


def supports_lean_decode(model) -> bool:
    """True for a Llama text model of plain Linear and RMSNorm layers with plain tensors as weights, without
    attention dropout in effect; others keep the full forward: quantized or LoRA-wrapped projections, and
    FSDP-sharded layers (their class changes, their weights are DTensors), whose forwards do more."""
    if getattr(model.config.text_config, "model_type", None) not in LEAN_MODEL_TYPES:
        return False
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    lm = model.model.language_model
    layers = lm.layers[: lm.config.num_hidden_layers]
    linears = [getattr(layer.self_attn, f"{p}_proj") for layer in layers for p in "qkvo"]
    linears += [getattr(layer.mlp, f"{p}_proj") for layer in layers for p in ("gate", "up", "down")]
    norms = [lm.norm, *(n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm))]
    return (all(type(layer) is LlamaDecoderLayer for layer in layers)
            and all(type(m) is nn.Linear and type(m.weight.data) is torch.Tensor for m in linears)
            and all(type(n) is LlamaRMSNorm for n in norms)
            and not (lm.training and lm.config.attention_dropout > 0))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic (fp32 statistics, weight applied in the input dtype)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of [R, heads, D] with cos/sin [R, 1, D], as `apply_rotary_pos_emb` computes it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LeanDecoder:
    """Runs the text model on one new token per row, reading and extending the prefill's KV buffers.

    `mask` [R, capacity] (1 on real tokens, None when no row is padded) hides the left padding of each
    row; `length` is the number of slots the prefill filled.
    """

    def __init__(self, lm: nn.Module, buffers: list[tuple[torch.Tensor, torch.Tensor]],
                 mask: torch.Tensor | None, length: int) -> None:
        cfg = lm.config
        layers = lm.layers[: cfg.num_hidden_layers]
        self.layers = [(_layer_weights(layer), k, v) for layer, (k, v) in zip(layers, buffers, strict=True)]
        self.rotary = lm.rotary_emb
        self.norm, self.eps = lm.norm.weight, lm.norm.variance_epsilon
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.scaling = lm.layers[0].self_attn.scaling
        dtype = lm.norm.weight.dtype  # additive: 0 on real tokens, -inf on left padding; [R, 1, capacity]
        self.bias = None if mask is None else torch.zeros(
            mask.shape[0], 1, mask.shape[1], dtype=dtype, device=mask.device).masked_fill(mask[:, None] == 0, -torch.inf)
        self.length = length

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [R, hidden] of `embeds` [R, hidden] at `positions` [R, 1]."""
        cos, sin = self.rotary(embeds, positions)  # [R, 1, D], once for every layer
        end = self.length + 1
        mask = None if self.bias is None else self.bias[..., :end]
        h = embeds
        for w, k_buf, v_buf in self.layers:
            h = h + self._attention(rms_norm(h, w.norm1, w.eps1), w, k_buf, v_buf, cos, sin, mask)
            gate, up = F.linear(rms_norm(h, w.norm2, w.eps2), w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
            h = h + F.linear(w.act(gate) * up, w.down, w.down_bias)
        self.length = end
        return rms_norm(h, self.norm, self.eps)

    def _attention(self, x: torch.Tensor, w: _Layer, k_buf: torch.Tensor, v_buf: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention of the new token over the filled prefix and itself; o_proj applied.

        GQA as transformers' SDPA path does it for one query: the query heads of one kv head become
        that head's query rows ([R, kv_heads, groups, D]), so keys and values are never repeated."""
        r, h, kv = x.shape[0], self.heads, self.kv_heads
        qkv = F.linear(x, w.qkv, w.qkv_bias).view(r, h + 2 * kv, -1)
        qk = rotate(qkv[:, : h + kv], cos, sin)
        k_buf.select(2, self.length).copy_(qk[:, h:])
        v_buf.select(2, self.length).copy_(qkv[:, h + kv:])
        end = self.length + 1
        q = qk[:, :h].view(r, kv, h // kv, -1)
        out = attend(q, k_buf.narrow(2, 0, end), v_buf.narrow(2, 0, end), mask, self.scaling)
        return F.linear(out.reshape(r, -1), w.o, w.o_bias)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for one query position: q [R, kv, g, D] (g query heads per kv head),
    k and v [R, kv, T, D] (a prefix of the cache buffers), bias [R, 1, T] additive (-inf on padding) or None;
    returns [R, kv, g, D]. Equals SDPA to ~1e-6 (tested) and is faster on the CPU: SDPA runs q k^T as one
    tiny GEMM per head (~5 GB/s of keys), while k @ q^T is a GEMV over contiguous key rows (~12 GB/s), and
    the additive mask is built once per sampling call instead of converted from a boolean every step."""
    r, kv, g, d = q.shape
    t = k.shape[2]
    scores = torch.bmm(k.reshape(r * kv, t, d), q.reshape(r * kv, g, d).transpose(1, 2)).view(r, kv, t, g)
    scores = scores * scale if bias is None else torch.add(bias[:, :, :, None], scores, alpha=scale)
    probs = scores.softmax(2).view(r * kv, t, g).transpose(1, 2)  # over T
    return torch.bmm(probs, v.reshape(r * kv, t, d)).view(r, kv, g, d)
