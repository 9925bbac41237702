"""The Show-o transformer: phi-1.5 with QK-LayerNorm and a vocabulary extended by image tokens.

Why our own loader: the official checkpoints (`showlab/show-o`, `showlab/show-o-512x512`) are a
diffusers-style `Showo` module (config.json + pytorch_model.bin) whose only child is `showo`, a
`PhiForCausalLM`; building the same tree with transformers' `PhiForCausalLM` makes the state-dict keys
(`showo.model.layers.N...`, `showo.lm_head...`) match one to one, with no phi download.

Vocabulary (facts from the official configs and prompting code): ids [0, llm_vocab_size) are phi's
text tokens, then `num_new_special_tokens` (10) prompting tokens, then `codebook_size` (8192) image
tokens (image code k has id llm_vocab_size + num_new_special_tokens + k), then one [MASK] id
(vocab_size - 1).

Attention: Show-o is run with an omni-attention 4D mask (see `prompting.py`). Transformers returns a
4D mask unchanged (`masking_utils._preprocess_mask_arguments`), so we pass it as an additive float
mask (0 = attend, dtype-min = hidden), which the eager and SDPA kernels both add to the scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PhiConfig, PhiForCausalLM
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from unirl_kit.backbones.loading import check_finite_weights
from unirl_kit.types import InputError

# microsoft/phi-1_5 (the Show-o LLM); the official Show-o `PhiForCausalLM` forces qk_layernorm=True.
PHI_1_5: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
    "num_key_value_heads": 32, "hidden_act": "gelu_new", "max_position_embeddings": 2048,
    "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "qk_layernorm": True,
    "tie_word_embeddings": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
    "initializer_range": 0.02,
}

# Parameters of Show-o 1.3B (both 256 and 512 px; image tokens use rotary positions, so no size
# change): 24 * 50,354,432 (layers, with QK-LayerNorm) + 58,498 * 2048 (embeddings) + 58,498 * 2049
# (lm_head with bias) + 4096 (final LayerNorm). Counted from the architecture; it matches the 5.4 GB
# fp32 weight file listed for the published checkpoints (1.448e9 * 4 B = 5.39 GiB).
SHOWO_1_3B_PARAMS = 1_448_176_770

WEIGHT_FILES = ("model.safetensors", "pytorch_model.safetensors", "pytorch_model.bin")


@dataclass
class ShowoConfig:
    """The official config.json fields, plus the phi config (the official one downloads phi-1.5)."""

    vocab_size: int = 58498
    llm_vocab_size: int = 50295
    num_new_special_tokens: int = 10
    codebook_size: int = 8192
    num_vq_tokens: int = 256
    w_clip_vit: bool = False
    llm_model_path: str = "microsoft/phi-1_5"
    mask_token_id: int = -1  # -1: vocab_size - 1, as the official model registers it
    llm_config: dict[str, Any] = field(default_factory=lambda: dict(PHI_1_5))

    def __post_init__(self) -> None:
        if self.mask_token_id == -1:
            self.mask_token_id = self.vocab_size - 1

    @property
    def image_token_offset(self) -> int:
        """Id of image code 0."""
        return self.llm_vocab_size + self.num_new_special_tokens

    def validate(self, where: str) -> None:
        expected = self.image_token_offset + self.codebook_size + 1
        if self.vocab_size != expected:
            raise InputError(f"{where}: vocab_size {self.vocab_size} != llm_vocab_size + num_new_special_tokens "
                             f"+ codebook_size + 1 = {expected}; not a Show-o config")
        if self.mask_token_id != self.vocab_size - 1:
            raise InputError(f"{where}: mask_token_id {self.mask_token_id} is not vocab_size - 1 "
                             f"({self.vocab_size - 1}); not a Show-o config")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ShowoConfig:
        """Known fields only: the official file also carries `_class_name`, `_version`, `load_from_showo`..."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["llm_config"] = {**PHI_1_5, **(data.get("llm_config") or {}), "qk_layernorm": True}
        config = cls(**kwargs)
        config.validate(where)
        return config

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "Showo", **asdict(self)}

    def phi_config(self) -> PhiConfig:
        phi = PhiConfig(vocab_size=self.vocab_size, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                        use_cache=False, **self.llm_config)
        phi._attn_implementation = "sdpa"  # flash-attention kernels ignore a 4D mask
        return phi

    @classmethod
    def tiny(cls, num_vq_tokens: int = 16, codebook_size: int = 32) -> ShowoConfig:
        """A ~100 kB model with the real layout (text ids, 10 specials, codebook, mask) for tests."""
        llm_vocab = 64
        llm = {**PHI_1_5, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512}
        return cls(vocab_size=llm_vocab + 10 + codebook_size + 1, llm_vocab_size=llm_vocab,
                   codebook_size=codebook_size, num_vq_tokens=num_vq_tokens, llm_config=llm)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, Q, K] float mask from a boolean one (True = may attend); a float mask passes through."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class Showo(nn.Module):
    """`showo` is the phi LM; `mm_projector` exists only for the CLIP-ViT variants (w_clip_vit)."""

    def __init__(self, config: ShowoConfig) -> None:
        super().__init__()
        self.config = config
        self.showo = PhiForCausalLM(config.phi_config())
        if config.w_clip_vit:
            hidden = config.llm_config["hidden_size"]
            self.mm_projector = nn.Sequential(nn.Linear(1024, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    @property
    def device(self) -> torch.device:
        return self.showo.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.showo.lm_head.weight.dtype

    @property
    def language_model(self) -> nn.Module:
        """The phi transformer: what LoRA adapts (training/lora.py looks for this name)."""
        return self.showo.model

    def gradient_checkpointing_enable(self) -> None:
        self.showo.gradient_checkpointing_enable()

    def hidden(self, input_ids: torch.Tensor, attention_mask_4d: torch.Tensor,
               position_ids: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Final-LayerNorm hidden states [B, L, H]; positions default to 0..L-1 (the official ones)."""
        out = self.showo.model(input_ids=input_ids, attention_mask=additive_mask(attention_mask_4d, self.dtype),
                               position_ids=position_ids, cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def head(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Logits of vocabulary columns [start, stop) only (e.g. the codebook: skips 85% of lm_head)."""
        weight, bias = self.showo.lm_head.weight[start:stop], self.showo.lm_head.bias[start:stop]
        return nn.functional.linear(hidden, weight, bias)

    def forward(self, input_ids: torch.Tensor, attention_mask_4d: torch.Tensor,
                position_ids: torch.Tensor | None = None, cache=None, keep: slice | torch.Tensor | None = None,
                columns: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits [B, L, vocab_size]; `keep` (a slice, or [B, K] indices) and `columns` (a vocabulary
        range) restrict them. Samplers call this (not `hidden`/`head`) so a DDP wrapper sees the pass."""
        hidden = self.hidden(input_ids, attention_mask_4d, position_ids, cache)
        if isinstance(keep, slice):
            hidden = hidden[:, keep]
        elif keep is not None:
            hidden = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
        start, stop = columns if columns is not None else (0, None)
        return self.head(hidden, start, stop)


def unwrap(model) -> Showo:
    """The `Showo` inside a DDP/FSDP-style wrapper (for attributes; calls go through the wrapper)."""
    return getattr(model, "module", model)


def expected_keys(config: ShowoConfig) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of a `Showo`, built on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = Showo(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(str(file))
        try:
            try:
                return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
                return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with objects, or a git-lfs pointer
            raise InputError(f"{file}: not a readable PyTorch state dict ({type(exc).__name__}); "
                             "re-download it or convert it to model.safetensors") from None
    raise InputError(f"{path}: no Show-o weights ({' or '.join(WEIGHT_FILES)}); "
                     "expected a folder with config.json and the weights")


def _mismatch(path: Path, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
              strict: bool) -> str | None:
    """One line naming the first offending keys, or None when the checkpoint fits."""
    wrong = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != s]
    problems = [f"shape mismatch: {', '.join(wrong[:3])}"] if wrong else []
    if strict:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing:
            problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
    return f"{path}: weights do not match the Show-o config: {'; '.join(problems)}" if problems else None


def load_showo(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               strict: bool = True) -> Showo:
    """A `Showo` from an official (or `save_showo`) folder, in eval mode; raises InputError on a mismatch.

    strict=False tolerates missing keys (left randomly initialised) and unexpected ones (ignored)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: no config.json; expected a Show-o folder (config.json + weights)")
    try:
        data = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path / 'config.json'}: not valid JSON ({exc.msg})") from None
    config = ShowoConfig.from_dict(data, where=str(path / "config.json"))
    state = _read_weights(path)
    check_finite_weights(state, path, WEIGHT_FILES)
    expected = expected_keys(config)
    error = _mismatch(path, state, expected, strict)
    if error:
        raise InputError(error)
    device = torch.device(device)
    if strict:  # every tensor comes from the file: skip the random init of 1.4B parameters
        with torch.device("meta"):
            model = Showo(config)
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        # non-persistent rotary buffers were created on meta; rebuild them (kept in float32)
        model.showo.model.rotary_emb = PhiRotaryEmbedding(model.showo.config).to(device)
    else:
        model = Showo(config).to(device=device, dtype=dtype)
        model.showo.model.rotary_emb = PhiRotaryEmbedding(model.showo.config).to(device)
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model.eval()


def save_showo(model: Showo, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """config.json (official fields + llm_config) and model.safetensors, which `load_showo` reads back."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    source = model.state_dict() if state_dict is None else state_dict  # e.g. LoRA merged, adapters dropped
    state = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
