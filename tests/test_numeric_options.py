"""Every numeric option: a NaN, an infinity or a value out of its range is refused before any work.

Each case runs the real command (typer's CliRunner, in process) and expects exit code 2, one stderr
line naming the key as the user typed it, no traceback and no output written. Beside the table: every
numeric field of every command's config has an entry in `RANGES`, and the shipped configs pass it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unirl_kit.cli import app

ROOT = Path(__file__).resolve().parents[1]

# (command line, key the error must name); {prompts}, {samples} and {out} are filled in per test
GENERATE = ["generate", "--prompts", "{prompts}", "--out", "{out}"]
SCORE = ["score", "{samples}", "--out", "{out}/scores.jsonl"]
GENEVAL = ["eval", "geneval", "{samples}", "--out", "{out}"]
UNDERSTANDING = ["eval", "understanding", "--out", "{out}"]
GRPO = ["train", "grpo", "prompts={prompts}", "run.out={out}"]
SFT = ["train", "sft", "prompts={prompts}", "run.out={out}"]
PROMPTS = ["prompts", "--out", "{out}/p.jsonl"]
RENDER = ["render", "{prompts}", "--out", "{out}"]
LOOP = ["loop", "out={out}"]
PRETRAIN = ["pretrain", "out={out}"]

CASES: list[tuple[list[str], str]] = [
    (GENERATE + ["--group-size", "0"], "group_size"),
    (GENERATE + ["--batch-size", "0"], "batch_size"),
    (GENERATE + ["--seed", "-1"], "seed"),
    (GENERATE + ["seed=4294967296"], "seed"),
    (GENERATE + ["sampling.cfg_scale=nan"], "sampling.cfg_scale"),
    (GENERATE + ["sampling.cfg_scale=-1"], "sampling.cfg_scale"),
    (GENERATE + ["sampling.temperature=-1"], "sampling.temperature"),
    (GENERATE + ["sampling.temperature=inf"], "sampling.temperature"),
    (GENERATE + ["sampling.top_k=0"], "sampling.top_k"),
    (GENERATE + ["sampling.top_p=0"], "sampling.top_p"),
    (GENERATE + ["sampling.top_p=1.5"], "sampling.top_p"),
    (GENERATE + ["sampling.top_p=nan"], "sampling.top_p"),
    (GENERATE + ["cfg_scale=-1"], "sampling.cfg_scale"),  # the flat key of earlier versions, read as the new one
    (SCORE + ["--reward", "self-qa:nan"], "self-qa:nan"),
    (SCORE + ["--reward", "self-qa:inf"], "self-qa:inf"),
    (SCORE + ["--reward", "geneval:-inf"], "geneval:-inf"),
    (SCORE + ["--batch-size", "0"], "batch_size"),
    (SCORE + ["rank_timeout_s=nan"], "rank_timeout_s"),
    (SCORE + ["--reward", "geneval", "reward_options.geneval.threshold=nan"], "rewards.geneval.threshold"),
    (SCORE + ["--reward", "geneval", "reward_options.geneval.threshold=2"], "rewards.geneval.threshold"),
    (GENEVAL + ["--batch-size", "0"], "batch_size"),
    (GENEVAL + ["rules.threshold=nan"], "rules.threshold"),
    (GENEVAL + ["rules.threshold=1.5"], "rules.threshold"),
    (GENEVAL + ["rules.max_objects=0"], "rules.max_objects"),
    (GENEVAL + ["rules.max_overlap=-0.1"], "rules.max_overlap"),
    (GENEVAL + ["rank_timeout_s=0"], "rank_timeout_s"),
    (UNDERSTANDING + ["--batch-size", "0"], "batch_size"),
    (UNDERSTANDING + ["max_new_tokens=0"], "max_new_tokens"),
    (UNDERSTANDING + ["per_tag=0"], "per_tag"),
    (UNDERSTANDING + ["pope.n_images=-1"], "pope.n_images"),
    (UNDERSTANDING + ["seed=-5"], "seed"),
    (GRPO + ["optim.lr=nan"], "optim.lr"),
    (GRPO + ["optim.lr=0"], "optim.lr"),
    (GRPO + ["optim.lr=-1e-5"], "optim.lr"),
    (GRPO + ["optim.grad_clip=nan"], "optim.grad_clip"),
    (GRPO + ["optim.grad_clip=-1"], "optim.grad_clip"),
    (GRPO + ["optim.beta1=1"], "optim.beta1"),
    (GRPO + ["optim.beta2=inf"], "optim.beta2"),
    (GRPO + ["optim.weight_decay=-0.1"], "optim.weight_decay"),
    (GRPO + ["optim.warmup_steps=-1"], "optim.warmup_steps"),
    (GRPO + ["optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    (GRPO + ["optim.micro_batch=0"], "optim.micro_batch"),
    (GRPO + ["sampling.temperature=-1"], "sampling.temperature"),
    (GRPO + ["sampling.temperature=0"], "sampling.temperature"),
    (GRPO + ["sampling.cfg_scale=nan"], "sampling.cfg_scale"),
    (GRPO + ["sampling.top_p=0"], "sampling.top_p"),
    (GRPO + ["run.log_every=0"], "run.log_every"),
    (GRPO + ["run.seed=-1"], "run.seed"),
    (GRPO + ["run.steps=0"], "run.steps"),
    (GRPO + ["run.steps=-3"], "run.steps"),
    (GRPO + ["run.checkpoint_every=0"], "run.checkpoint_every"),
    (GRPO + ["run.keep_checkpoints=-1"], "run.keep_checkpoints"),
    (GRPO + ["group_size=1"], "group_size"),
    (GRPO + ["group_size=0"], "group_size"),
    (GRPO + ["prompts_per_step=0"], "prompts_per_step"),
    (GRPO + ["num_iterations=0"], "num_iterations"),
    (GRPO + ["epsilon=nan"], "epsilon"),
    (GRPO + ["epsilon_high=-1"], "epsilon_high"),
    (GRPO + ["beta=-0.1"], "beta"),
    (GRPO + ["beta=inf"], "beta"),
    (GRPO + ["negative_weight=1.5"], "negative_weight"),
    (GRPO + ["max_redraws=-1"], "max_redraws"),
    (GRPO + ["und_temperature=0"], "und_temperature"),
    (GRPO + ["und_max_new_tokens=0"], "und_max_new_tokens"),
    (GRPO + ["gen_weight=-1"], "gen_weight"),
    (GRPO + ["lora.r=0"], "lora.r"),
    (GRPO + ["lora.dropout=1"], "lora.dropout"),
    (GRPO + ["rewards=[self-qa:nan]"], "self-qa:nan"),
    (SFT + ["gumbel_tau=0"], "gumbel_tau"),
    (SFT + ["keep_top=-1"], "keep_top"),
    (SFT + ["und_weight=-1"], "und_weight"),
    (SFT + ["mode=gen-rs", "threshold=nan"], "threshold"),
    (SFT + ["optim.lr=nan"], "optim.lr"),
    (SFT + ["sampling.temperature=-1"], "sampling.temperature"),
    (PROMPTS + ["--n", "0"], "n"),
    (PROMPTS + ["--seed", "-1"], "seed"),
    (PROMPTS + ["--shares", "position=nan"], "shares.position"),
    (PROMPTS + ["--shares", "position=inf,counting=1"], "shares.position"),
    (RENDER + ["--images-per-prompt", "0"], "images_per_prompt"),
    (RENDER + ["--size", "0"], "size"),
    (RENDER + ["--size", "100000"], "size"),
    (RENDER + ["--seed", "-1"], "seed"),
    (LOOP + ["rounds=-1"], "rounds"),
    (LOOP + ["n_eval=0"], "n_eval"),
    (LOOP + ["eval_group_size=0"], "eval_group_size"),
    (LOOP + ["batch_size=0"], "batch_size"),
    (LOOP + ["seed=-1"], "seed"),
    (LOOP + ["train_shares.position=nan"], "train_shares.position"),
    (LOOP + ["sampling.temperature=-1"], "sampling.temperature"),
    (LOOP + ["grpo_overrides=[optim.lr=nan]"], "optim.lr"),
    (LOOP + ["train=sft", "sft_overrides=[gumbel_tau=0]"], "gumbel_tau"),
    (PRETRAIN + ["tokenizer.lr=nan"], "tokenizer.lr"),
    (PRETRAIN + ["lm.cfg_dropout=2"], "lm.cfg_dropout"),
    (PRETRAIN + ["gate.threshold=1.5"], "gate.threshold"),
    (PRETRAIN + ["vision.steps=0"], "vision.steps"),
    (PRETRAIN + ["guidance_scale=nan"], "guidance_scale"),
    (PRETRAIN + ["seed=-1"], "seed"),
    (["serve", "reward", "--reward", "geneval", "--port", "70000"], "--port"),
    (["serve", "reward", "--reward", "geneval", "--port", "-1"], "--port"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prompts file and a rendered samples folder (one image per prompt) that the cases point at."""
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
    from unirl_kit.worlds.shapes.dataset import RenderConfig, run_render

    root = tmp_path_factory.mktemp("numeric")
    prompts = root / "prompts.jsonl"
    run_prompts(PromptsConfig(n=2, seed=0, out=str(prompts)))
    run_render(RenderConfig(prompts=str(prompts), out=str(root / "samples"), images_per_prompt=1))
    return {"prompts": prompts, "samples": root / "samples"}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path: an input folder must come out of a refusal unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("args", "key"), CASES, ids=[" ".join(a[:2] + a[-1:]) for a, _ in CASES])
def test_a_bad_number_is_refused_before_any_work(inputs, tmp_path, args, key):
    out = tmp_path / "out"
    before = _snapshot(inputs["samples"])
    argv = [a.format(out=out, **inputs) for a in args]
    result = CliRunner().invoke(app, argv, env={"NO_COLOR": "1", "COLUMNS": "200"})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert key in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert _snapshot(inputs["samples"]) == before


def _command_configs() -> list[type]:
    """The config of every command that takes `key=value` options."""
    from unirl_kit.eval.geneval.runner import GenevalConfig
    from unirl_kit.eval.understanding.runner import UnderstandingConfig
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.pretrain.recipe import PretrainConfig
    from unirl_kit.prompts.cmd import PromptsConfig
    from unirl_kit.scoring.run import ScoreConfig
    from unirl_kit.training.config import GRPOConfig, SFTConfig
    from unirl_kit.worlds.shapes.dataset import RenderConfig

    return [GenerateConfig, ScoreConfig, GenevalConfig, UnderstandingConfig, GRPOConfig, SFTConfig, LoopConfig,
            PromptsConfig, RenderConfig, PretrainConfig]


def _is_numeric(hint: object) -> bool:
    """int or float, optional or not, or a list or str-keyed mapping of them (`channel_multiplier`, `shares`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_is_numeric(a) for a in args if a is not type(None))
    if origin is list:
        return _is_numeric(args[0])
    if origin is dict:
        return _is_numeric(args[1])
    return hint in (int, float)


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[type, str, str]]:
    """(class, field, dotted key) of every numeric field, nested configs included."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += _numeric_fields(hint, f"{prefix}{name}.")
        elif _is_numeric(hint):
            out.append((cls, name, f"{prefix}{name}"))
    return out


@pytest.mark.parametrize("cls", _command_configs(), ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_range(cls):
    from unirl_kit.config import range_of

    fields = _numeric_fields(cls)
    assert fields
    assert [key for owner, name, key in fields if range_of(owner, name) is None] == []


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "reproduce"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_are_in_range(path, monkeypatch):
    from unirl_kit.config import check_ranges, load_config
    from unirl_kit.loop.config import check_loop

    by_folder = {c.__name__.removesuffix("Config").lower(): c for c in _command_configs()}
    name = path.parent.name if path.parent.name != "eval" else path.stem.split("_")[0]
    cls = by_folder[name]
    monkeypatch.chdir(ROOT)  # a loop config names its trainers' configs from the repository root
    cfg = load_config(cls, path)
    if name == "loop" and cfg.detector == "mask2former":  # a GPU config: the user names the detector's folder
        cfg.detector_options = {**cfg.detector_options, "model": "DIR"}
    check_loop(cfg) if name == "loop" else check_ranges(cfg)


def test_a_config_file_value_is_checked_too(inputs, tmp_path):
    """The same check holds a value that comes from --config, not the command line."""
    config = tmp_path / "bad.yaml"
    config.write_text("optim: {lr: .nan}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "grpo", "--config", str(config), f"prompts={inputs['prompts']}",
                                      f"run.out={out}"])
    assert result.exit_code == 2 and "optim.lr: must be a finite number" in result.stderr, result.output
    assert not out.exists()
