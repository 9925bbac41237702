"""`unirl pretrain`: the tiny-shapes recipe, stage by stage, each resumable.

1. tokenizer: train the VQ on rendered scenes; 2. gate: the tokenizer must pass `tokenizer_gate`
before anything builds on it; 3. vision: pre-train the understanding tower on scene labels (as
Janus's SigLIP is pre-trained apart); 4. lm: the Janus language model in both directions, on the
frozen tokenizer and tower; 5. export: the trained model (weights in bf16, under the 20 MB budget), tokenizer and
processor as an HF-style directory (the package ships one at backbones/tiny_shapes/weights/).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from unirl_kit.config import check_ranges, write_run_info
from unirl_kit.jsonl import read_json, write_atomic
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.pretrain.language_model import LanguageModelConfig
from unirl_kit.pretrain.tokenizer import TokenizerConfig
from unirl_kit.pretrain.vision import VisionConfig
from unirl_kit.types import GENEVAL_TAGS, InputError

STAGES = ("tokenizer", "gate", "vision", "lm", "export")


@dataclass
class GateConfig:
    per_tag: int = 100
    threshold: float = 0.95


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain/tiny_shapes"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    export_dir: str | None = None  # default: OUT/export
    guidance_scale: float | None = None  # the export's generation_config.json: the CFG it samples with by default


@holds_output_locks
def run_pretrain(cfg: PretrainConfig) -> dict:
    check_ranges(cfg)
    for name in ("base_channels", "latent_channels"):  # the tokenizer's GroupNorm(32) layers
        if getattr(cfg.tokenizer, name) % 32:
            raise InputError(f"tokenizer.{name}: must be a multiple of 32 (GroupNorm(32)), got "
                             f"{getattr(cfg.tokenizer, name)}")
    down = 2 ** (len(cfg.tokenizer.channel_multiplier) - 1)  # the tokenizer halves the side this often
    if cfg.tokenizer.image_size % down:
        raise InputError(f"tokenizer.image_size: must be a multiple of {down} (the encoder downsamples "
                         f"{len(cfg.tokenizer.channel_multiplier) - 1} times), got {cfg.tokenizer.image_size}")
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise InputError(f"stages: unknown stage {unknown[0]!r}; expected some of {', '.join(STAGES)}")
    bad_tags = [t for t in cfg.lm.caption_noise_tags if t not in GENEVAL_TAGS]
    if bad_tags:
        raise InputError(f"lm.caption_noise_tags: unknown tag {bad_tags[0]!r}; expected some of {', '.join(GENEVAL_TAGS)}")
    out = Path(cfg.out)
    tok_dir = out / "tokenizer"
    lock_output(out)
    if "lm" in cfg.stages and "gate" not in cfg.stages and (tok_dir / "gate.json").exists():
        _passed(tok_dir / "gate.json")  # a damaged gate result fails before config.yaml is rewritten
    write_run_info(out, cfg, "pretrain")
    report: dict = {}
    vq = None
    if "tokenizer" in cfg.stages:
        from unirl_kit.pretrain.tokenizer import train_tokenizer

        t0 = time.perf_counter()
        vq = train_tokenizer(cfg.tokenizer, tok_dir, cfg.seed)
        report["tokenizer_seconds_this_run"] = round(time.perf_counter() - t0, 1)
        vq.save_pretrained(tok_dir / "final")
    if "gate" in cfg.stages:
        from unirl_kit.pretrain.gate import tokenizer_gate

        if vq is None:
            vq = _load_vq(tok_dir / "final")
        gate = tokenizer_gate(vq, cfg.tokenizer.image_size, cfg.gate.per_tag, cfg.gate.threshold)
        write_atomic(tok_dir / "gate.json", json.dumps(gate, indent=2) + "\n")
        report["gate"] = gate
        if not gate["passed"]:
            raise InputError(f"tokenizer gate failed: {gate['per_tag']} (need >= {cfg.gate.threshold} in every "
                             f"tag); see {tok_dir / 'gate.json'}; train longer (tokenizer.steps=...) and rerun")
    vision_dir = out / "vision"
    if "vision" in cfg.stages:
        from unirl_kit.pretrain.vision import train_vision

        t0 = time.perf_counter()
        report["vision"] = train_vision(cfg.vision, vision_dir, cfg.lm.vision_hidden, cfg.lm.vision_layers,
                                        cfg.lm.text_hidden, cfg.seed)
        report["vision_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    model = tokenizer = None
    if "lm" in cfg.stages:
        from unirl_kit.pretrain.language_model import train_language_model

        gate_file = tok_dir / "gate.json"
        if not gate_file.exists() or not _passed(gate_file):
            raise InputError(f"{gate_file}: the tokenizer has not passed its gate; run the gate stage first")
        if cfg.lm.pretrained_vision and not (vision_dir / "final").is_dir():
            raise InputError(f"{vision_dir / 'final'}: no pre-trained vision tower; run the vision stage first "
                             "(or set lm.pretrained_vision=false)")
        t0 = time.perf_counter()
        model, tokenizer = train_language_model(cfg.lm, tok_dir / "final", out / "lm", cfg.seed,
                                                vision_dir / "final" if cfg.lm.pretrained_vision else None)
        report["lm_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    if "export" in cfg.stages:
        from unirl_kit.pretrain.export import export_model

        target = Path(cfg.export_dir) if cfg.export_dir else out / "export"
        report["export"] = export_model(out / "lm", tok_dir / "final", cfg.lm, target, cfg.guidance_scale)
    return report


def _passed(gate_file: Path) -> bool:
    """Whether the tokenizer gate's saved result says it passed (a damaged file: one line naming it)."""
    gate = read_json(gate_file)
    if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
        raise InputError(f"{gate_file}: expected the gate's result ({{\"passed\": true|false, ...}}); "
                         "rerun the gate stage")
    return gate["passed"]


def _load_vq(path: Path):
    if not path.is_dir():
        raise InputError(f"{path}: no trained tokenizer; run the tokenizer stage first")
    from transformers.models.janus.modeling_janus import JanusVQVAE

    return JanusVQVAE.from_pretrained(path).eval()
