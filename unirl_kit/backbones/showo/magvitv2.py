"""The MAGVIT-v2 image tokenizer of Show-o (`showlab/magvitv2`), written natively so its weights load as-is.

Token rule (what makes real Show-o weights work): the encoder maps [B, 3, H, W] pixels in [-1, 1] to
13 latent channels at H/16 x W/16; channel c of a position gives bit weight 2^(12-c) when positive
(> 0; zero counts as negative), so a token id is sum_c 2^(12-c) [z_c > 0] in 0..8191, channel 0 the
most significant bit. Tokens are listed row-major (row 0 left to right, then row 1, ...). Decoding
looks up the ±1 vector of each id and runs the decoder. Official `decode_code` returns the decoder
output unclamped; Show-o's inference then shows `clamp((x + 1) / 2, 0, 1) * 255`, so `decode` here
returns `x.clamp(-1, 1)`: the same pixels once mapped with `(x + 1) / 2`.

Layout: a folder with `config.json` and `model.safetensors` (ours) or `pytorch_model.bin` (published).
The published `config.json` holds only metadata (`_class_name`, `_version`, ...): the official
`MAGVITv2.__init__` takes no arguments, its sub-modules use their defaults, which are this config's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unirl_kit.backbones.loading import check_finite_weights
from unirl_kit.backbones.showo.magvitv2_blocks import Decoder, Encoder, LFQuantizer, lfq_codebook, lfq_powers
from unirl_kit.types import InputError

CLASS_NAME = "MAGVITv2"
_TUPLE_FIELDS = ("ch_mult", "num_res_blocks", "decoder_ch_mult", "decoder_num_res_blocks", "attn_resolutions")


@dataclass(frozen=True)
class MagvitV2Config:
    """Architecture fields, named as the official VQGANEncoder/VQGANDecoder/LFQuantizer arguments.

    The encoder and decoder take different `ch_mult`/`num_res_blocks` defaults officially; the
    decoder's are `decoder_*` here. `attn_resolutions` [5] never matches (256 -> 16 halves), so the
    real model has attention only in the two middle blocks.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    attn_resolutions: tuple[int, ...] = (5,)
    dropout: float = 0.0
    in_ch: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 13
    double_z: bool = False
    codebook_dim: int = 13

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.ch_mult) != len(self.num_res_blocks) or len(self.decoder_ch_mult) != len(self.decoder_num_res_blocks):
            raise InputError("magvitv2 config: ch_mult and num_res_blocks (and their decoder_* pair) need equal lengths")
        if len(self.ch_mult) != len(self.decoder_ch_mult):
            raise InputError("magvitv2 config: encoder and decoder need the same number of levels (ch_mult lengths)")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult + self.decoder_ch_mult]
        if any(w % 32 for w in widths):
            raise InputError(f"magvitv2 config: ch * ch_mult must be multiples of 32 (GroupNorm(32)); got {widths}")
        if self.z_channels != self.codebook_dim:
            raise InputError(f"magvitv2 config: z_channels ({self.z_channels}) must equal codebook_dim "
                             f"({self.codebook_dim}): each latent channel is one code bit")
        if self.double_z:
            raise InputError("magvitv2 config: double_z=true is not supported (the LFQ tokenizer uses false)")

    @property
    def codebook_size(self) -> int:
        return 2**self.codebook_dim

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def tiny(cls) -> MagvitV2Config:
        """For tests: 16x downsampling (32 px -> 2x2 tokens), 6 bits (64 codes), attention at 4 px."""
        return cls(ch=32, ch_mult=(1, 1, 1, 2, 2), num_res_blocks=(1, 1, 1, 1, 1), decoder_ch_mult=(1, 1, 1, 2, 2),
                   decoder_num_res_blocks=(1, 1, 1, 1, 1), attn_resolutions=(4,), resolution=64,
                   z_channels=6, codebook_dim=6)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "magvitv2 config") -> MagvitV2Config:
        """Metadata keys (leading `_`) are skipped, as the official loader does; any other unknown key fails."""
        known = {f.name for f in fields(cls)}
        name = data.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise InputError(f"{source}: _class_name is {name!r}, not {CLASS_NAME!r}; give a MAGVIT-v2 tokenizer folder")
        for key in data:
            if not key.startswith("_") and key not in known:
                raise InputError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> MagvitV2Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file; a MAGVIT-v2 folder needs config.json") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_class_name": CLASS_NAME}
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()})
        return out

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


class MagvitV2(nn.Module):
    """Encoder + LFQ + decoder; state-dict keys are the published ones (`encoder.*`, `decoder.*`, `quantize.*`)."""

    def __init__(self, config: MagvitV2Config | None = None) -> None:
        super().__init__()
        self.config = config = config or MagvitV2Config()
        shared = dict(ch=config.ch, attn_resolutions=config.attn_resolutions, dropout=config.dropout,
                      resolution=config.resolution, z_channels=config.z_channels)
        self.encoder = Encoder(ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks, in_ch=config.in_ch, **shared)
        self.decoder = Decoder(ch_mult=config.decoder_ch_mult, num_res_blocks=config.decoder_num_res_blocks,
                               out_ch=config.out_ch, **shared)
        self.quantize = LFQuantizer(config.codebook_dim)

    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] (H, W multiples of 16) -> token ids [B, (H/16)*(W/16)], row-major."""
        f = self.config.downsample_factor
        if pixels.dim() != 4 or pixels.shape[1] != self.config.in_ch or pixels.shape[2] % f or pixels.shape[3] % f:
            raise InputError(f"magvitv2 encode: expected pixels [B, {self.config.in_ch}, H, W] with H, W multiples "
                             f"of {f}; got {tuple(pixels.shape)}")
        z = self.encoder(pixels.to(self.quantize.embedding.dtype))
        return self.quantize.indices(z).reshape(pixels.shape[0], -1)

    def decode(self, tokens: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """Token ids [B, h*w] -> pixels [B, 3, 16h, 16w] clamped to [-1, 1]; `shape` (h, w) defaults to square."""
        if tokens.dim() != 2:
            raise InputError(f"magvitv2 decode: expected tokens [B, h*w]; got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if shape is None:
            side = math.isqrt(n)
            shape = (side, side)
        if shape[0] * shape[1] != n:
            raise InputError(f"magvitv2 decode: {n} tokens do not fill a {shape[0]}x{shape[1]} grid; pass shape=(h, w)")
        if n and (int(tokens.min()) < 0 or int(tokens.max()) >= self.quantize.codebook_size):
            raise InputError(f"magvitv2 decode: token ids must lie in 0..{self.quantize.codebook_size - 1}; got "
                             f"{int(tokens.min())}..{int(tokens.max())}")
        codes = self.quantize.codes(tokens.long().reshape(tokens.shape[0], *shape))
        return self.decoder(codes).clamp(-1.0, 1.0)


def _read_state_dict(folder: Path) -> dict[str, Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"), device="cpu")
    if (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", weights_only=True, map_location="cpu")
        if not isinstance(state, dict):
            raise InputError(f"{folder / 'pytorch_model.bin'}: not a state dict")
        return state
    raise InputError(f"{folder}: no model.safetensors or pytorch_model.bin; expected a MAGVIT-v2 tokenizer folder")


def _show(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(state: dict[str, Tensor], config: MagvitV2Config, source: str) -> None:
    """One-line InputError naming missing/unexpected/mis-shaped keys (first few, with counts)."""
    from unirl_kit.backbones.showo.magvitv2_keys import expected_keys

    expected = expected_keys(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    parts = [f"{len(missing)} missing ({_show(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_show(unexpected)})" if unexpected else "",
             f"{len(wrong)} wrong shape ({_show(wrong)})" if wrong else ""]
    parts = [p for p in parts if p]
    if parts:
        raise InputError(f"{source}: weights do not match the MAGVIT-v2 config: {'; '.join(parts)}")
    emb, powers = state["quantize.embedding"], state["quantize.power_vals"]
    if not (torch.equal(emb.float(), lfq_codebook(config.codebook_dim)) and torch.equal(powers.long(), lfq_powers(config.codebook_dim))):
        raise InputError(f"{source}: quantize.embedding/power_vals do not follow the MSB-first LFQ bit order")


def load_magvitv2(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  strict: bool = True) -> MagvitV2:
    """A folder (config.json + model.safetensors or pytorch_model.bin) -> eval-mode MagvitV2 on device/dtype.

    Strict: any key or shape mismatch is an InputError. Non-strict: matching tensors load, the rest keep
    their random init (for experiments, never for real tokens).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; expected a MAGVIT-v2 tokenizer (config.json + weights)")
    config = MagvitV2Config.from_json(folder / "config.json")
    state = _read_state_dict(folder)
    check_finite_weights(state, folder, ("model.safetensors", "pytorch_model.bin"))
    if strict:
        check_state_dict(state, config, str(folder))
        with torch.device("meta"):
            model = MagvitV2(config)
        model.load_state_dict(state, strict=True, assign=True)
        model.quantize.power_vals = model.quantize.power_vals.long()
    else:
        model = MagvitV2(config)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def save_magvitv2(model: MagvitV2, path: str | Path) -> None:
    """Write config.json + model.safetensors, the layout `load_magvitv2` reads."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json(folder / "config.json")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
