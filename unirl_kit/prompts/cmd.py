"""`unirl prompts`: the config and the job behind the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unirl_kit.config import check_ranges, write_run_info
from unirl_kit.locking import make_output_file_folder
from unirl_kit.prompts.generate import generate_prompts, generate_training_prompts
from unirl_kit.prompts.qa import QuestionStyle, check_style
from unirl_kit.prompts.schema import read_prompts, write_prompts
from unirl_kit.types import InputError, PromptSpec


@dataclass
class PromptsConfig:
    world: str = "shapes"
    n: int = 120
    seed: int = 0
    exclude: str | None = None
    # a share per tag (weights, e.g. {position: 2, counting: 1}) for a training set: each tag gets its share,
    # held out from `exclude` where the tag's prompts allow, else reusing exclude's own (see generate_training_prompts)
    shares: dict[str, float] | None = None
    question_style: QuestionStyle = "named"  # unirl: the authors' wording (no question names an object); see prompts/qa.py
    out: str = ""


def parse_shares(text: str) -> dict[str, float]:
    """`--shares equal` (the six tags alike) or `--shares position=2,counting=1`."""
    from unirl_kit.types import GENEVAL_TAGS

    if text.strip() == "equal":
        return dict.fromkeys(GENEVAL_TAGS, 1.0)
    shares: dict[str, float] = {}
    for part in text.split(","):
        tag, sep, weight = part.partition("=")
        try:
            shares[tag.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--shares {text!r}: expected 'equal' or TAG=WEIGHT,... (e.g. position=2,counting=1)")
    return shares


def run_prompts(cfg: PromptsConfig) -> list[PromptSpec]:
    if not cfg.out:
        raise InputError("prompts needs --out FILE.jsonl")
    check_ranges(cfg)
    check_style(cfg.question_style)
    make_output_file_folder(Path(cfg.out), "--out")
    held_out = read_prompts(Path(cfg.exclude)) if cfg.exclude else []
    if cfg.shares is not None:
        specs = generate_training_prompts(cfg.world, cfg.n, cfg.seed, cfg.shares, held_out, cfg.question_style)
    else:
        specs = generate_prompts(cfg.world, cfg.n, cfg.seed, {spec.prompt: spec.tag for spec in held_out},
                                 style=cfg.question_style)
    out = Path(cfg.out)
    write_prompts(specs, out)
    write_run_info(out.parent, cfg, "prompts", prefix=f"{out.stem}.")
    return specs
