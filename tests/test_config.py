"""Configs (`unirl_kit.config`): precedence, `a.b=value` overrides, one-line errors that name the key,
plugin option checks, and the same errors through the `unirl` CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unirl_kit.config import check_call_options, check_ranges, load_config, parse_overrides
from unirl_kit.eval.geneval.rules import RuleOptions
from unirl_kit.eval.geneval.runner import GenevalConfig
from unirl_kit.prompts.cmd import PromptsConfig
from unirl_kit.registry import registry
from unirl_kit.types import InputError


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg  # one line
    return msg


@pytest.fixture
def yaml_file(tmp_path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text("batch_size: 8\nrank_timeout_s: 10.0\nrules:\n  threshold: 0.4\n  max_objects: 5\n"
                    "detector_options:\n  min_area: 4\n")
    return path


# ---------------------------------------------------------------- precedence


def test_defaults_only():
    cfg = load_config(GenevalConfig)
    assert cfg == GenevalConfig()
    assert cfg.rules == RuleOptions()


def test_yaml_over_defaults(yaml_file):
    cfg = load_config(GenevalConfig, yaml_file)
    assert cfg.batch_size == 8 and cfg.rank_timeout_s == 10.0
    assert cfg.rules.threshold == 0.4 and cfg.rules.max_objects == 5
    assert cfg.rules.counting_threshold == 0.9  # untouched nested fields keep their defaults
    assert cfg.detector_options == {"min_area": 4}
    assert cfg.detector == "shapes"


def test_cli_over_yaml_and_none_means_not_given(yaml_file):
    cfg = load_config(GenevalConfig, yaml_file, {"batch_size": 4, "detector": None, "rules.max_objects": 7})
    assert cfg.batch_size == 4
    assert cfg.detector == "shapes"  # None: the option was not given on the command line
    assert cfg.rules.max_objects == 7 and cfg.rules.threshold == 0.4  # nested CLI keys merge deeply


def test_overrides_over_cli_and_yaml(yaml_file):
    cfg = load_config(GenevalConfig, yaml_file, {"batch_size": 4},
                      ["batch_size=2", "rules.threshold=0.5", "rules.position_threshold=0.2"])
    assert cfg.batch_size == 2
    assert cfg.rules.threshold == 0.5 and cfg.rules.position_threshold == 0.2
    assert cfg.rules.max_objects == 5  # from the YAML file, next to an overridden sibling
    assert cfg.rank_timeout_s == 10.0


def test_nested_override_on_geneval_rules():
    cfg = load_config(GenevalConfig, None, {}, ["rules.threshold=0.5"])
    assert cfg.rules.threshold == 0.5
    assert isinstance(cfg.rules.threshold, float)
    assert isinstance(cfg.rules, RuleOptions)
    cfg = load_config(GenevalConfig, None, {}, ["rules.max_overlap=1", "progress=false"])
    assert cfg.rules.max_overlap == 1.0 and isinstance(cfg.rules.max_overlap, float)
    assert cfg.progress is False


def test_last_override_wins():
    assert load_config(GenevalConfig, None, {}, ["batch_size=3", "batch_size=5"]).batch_size == 5


# ---------------------------------------------------------------- errors


def test_unknown_key_names_it_with_did_you_mean():
    msg = error_of(load_config, GenevalConfig, None, {}, ["rules.thresold=0.5"])
    assert "'thresold'" in msg and "did you mean 'threshold'" in msg
    msg = error_of(load_config, GenevalConfig, None, {}, ["batchsize=4"])
    assert "'batchsize'" in msg and "did you mean 'batch_size'" in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rules:\n  max_objets: 3\n")
    msg = error_of(load_config, GenevalConfig, path)
    assert str(path) in msg and "'max_objets'" in msg and "did you mean 'max_objects'" in msg


@pytest.mark.parametrize(("override", "key", "expected"), [
    ("rules.max_objects=abc", "rules.max_objects", "int"),
    ("batch_size=1.5", "batch_size", "int"),
    ("batch_size=true", "batch_size", "int"),
    ("rules.threshold=high", "rules.threshold", "float"),
    ("progress=maybe", "progress", "bool"),
])
def test_wrong_type_names_key_and_expected_type(override, key, expected):
    msg = error_of(load_config, GenevalConfig, None, {}, [override])
    assert key in msg
    assert f"expected {expected}" in msg


def test_string_fields_keep_leading_zeros():
    cfg = load_config(GenevalConfig, None, {}, ["images_dir=0001", "out=007", "detections=0002"])
    assert cfg.images_dir == "0001" and cfg.out == "007" and cfg.detections == "0002"
    assert all(type(v) is str for v in (cfg.images_dir, cfg.out, cfg.detections))
    assert load_config(PromptsConfig, None, {}, ["out=0001"]).out == "0001"


@pytest.mark.parametrize("value", ["null", "None", "~"])
def test_optional_none(value):
    cfg = load_config(GenevalConfig, None, {"detections": "x.jsonl"}, [f"detections={value}"])
    assert cfg.detections is None


def test_optional_none_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detections: null\n")
    assert load_config(GenevalConfig, path).detections is None
    path.write_text("exclude: null\nn: 6\n")
    cfg = load_config(PromptsConfig, path)
    assert cfg.exclude is None and cfg.n == 6


@pytest.mark.parametrize("bad", ["foo", "=3", "a..b=1", ".a=1", "a.=1"])
def test_malformed_override(bad):
    msg = error_of(parse_overrides, [bad])
    assert repr(bad) in msg and "key=value" in msg
    error_of(load_config, GenevalConfig, None, {}, [bad])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("batch_size: 4\nrules:\n  threshold: [0.5\n  max_objects: 3\n")
    msg = error_of(load_config, GenevalConfig, path)
    assert msg.startswith(f"{path} line 4")
    assert "YAML" in msg


def test_yaml_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert str(path) in error_of(load_config, GenevalConfig, path)
    missing = tmp_path / "nope.yaml"
    msg = error_of(load_config, GenevalConfig, missing)
    assert str(missing) in msg and "not found" in msg


@pytest.mark.parametrize("override", ["rules.threshold=1e-3", "rank_timeout_s=1e3"])
def test_float_in_exponent_notation_is_accepted(override):
    cfg = load_config(GenevalConfig, None, {}, [override])
    assert cfg.rules.threshold == 1e-3 or cfg.rank_timeout_s == 1e3


def test_float_in_exponent_notation_is_accepted_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rules:\n  threshold: 1e-3\n")
    assert load_config(GenevalConfig, path).rules.threshold == 1e-3


def test_override_error_does_not_blame_the_yaml_file(yaml_file):
    msg = error_of(load_config, GenevalConfig, yaml_file, {}, ["batch_size=1.5"])
    assert "batch_size" in msg
    assert str(yaml_file) not in msg


# ---------------------------------------------------------------- plugin options


def test_check_call_options_rejects_unknown_naming_accepted():
    def factory(model: str, threshold: float = 0.5, *, device: str = "cpu"):
        return model

    msg = error_of(check_call_options, factory, {"model": "m", "treshold": 1}, "detectors.mine")
    assert msg.startswith("detectors.mine")
    assert "'treshold'" in msg
    assert "accepted: model, threshold, device" in msg
    assert "did you mean 'threshold'" in msg


def test_check_call_options_types_raw_strings_by_annotation():
    def factory(model: str, n: int = 1, scale: float = 1.0, flag: bool = False, anything=None):
        return model

    cfg = load_config(GenevalConfig, None, {}, ["detector_options.model=0001", "detector_options.n=3",
                                                "detector_options.scale=2", "detector_options.flag=true",
                                                "detector_options.anything=[1, 2]"])
    typed = check_call_options(factory, cfg.detector_options, "detectors.mine")
    assert typed == {"model": "0001", "n": 3, "scale": 2.0, "flag": True, "anything": [1, 2]}
    assert type(typed["model"]) is str
    cfg = load_config(GenevalConfig, None, {}, ["detector_options.n=abc"])
    msg = error_of(check_call_options, factory, cfg.detector_options, "detectors.mine")
    assert "detectors.mine.n" in msg and "int" in msg


def test_check_call_options_open_ended_factory_accepts_anything():
    def factory(**kwargs):
        return kwargs

    assert check_call_options(factory, {"x": 1}, "w") == {"x": 1}


def test_registry_build_rejects_unknown_plugin_option():
    msg = error_of(registry("detectors").build, "shapes", min_aera=3)
    assert "'min_aera'" in msg and "did you mean 'min_area'" in msg
    for name in ("max_color_distance", "min_area", "full_score_iou"):
        assert name in msg


# ---------------------------------------------------------------- through the CLI


def test_cli_unknown_key_is_one_line_error_with_did_you_mean(tiny_geneval_dir, tmp_path, unirl_cli):
    proc = unirl_cli("eval", "geneval", tiny_geneval_dir, "--out", tmp_path / "out", "rules.thresold=0.5",
                     check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "did you mean 'threshold'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_cli_wrong_type_is_one_line_error(tiny_geneval_dir, tmp_path, unirl_cli):
    proc = unirl_cli("eval", "geneval", tiny_geneval_dir, "--out", tmp_path / "out", "rules.max_objects=abc",
                     check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "rules.max_objects" in lines[0] and "int" in lines[0]


def test_cli_valid_override_is_recorded(tiny_geneval_dir, tmp_path, unirl_cli):
    import yaml

    out = tmp_path / "out"
    unirl_cli("eval", "geneval", tiny_geneval_dir, "--out", out, "rules.threshold=0.5", "batch_size=2")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rules"]["threshold"] == 0.5 and saved["batch_size"] == 2
    assert saved["command"] == "eval geneval"


@dataclass
class _Inner:
    x: int = 1


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    name: str = "a"


def test_from_yaml_and_overrides_on_any_dataclass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  x: 2\nname: b\n")
    cfg = load_config(_Outer, path, {"name": "c"}, ["inner.x=3"])
    assert cfg == _Outer(_Inner(3), "c")


def test_launch_lines_in_config_headers_are_runnable():
    """torchrun runs a script or `-m module`; the `unirl` console script is neither."""
    root = Path(__file__).resolve().parents[1]
    lines = [(p.name, line) for p in sorted((root / "configs").rglob("*.yaml"))
             for line in p.read_text().splitlines() if "torchrun " in line]
    assert lines
    bad = [(name, line) for name, line in lines if "-m unirl_kit.cli " not in line]
    assert not bad, bad


def test_a_literal_field_built_in_python_is_checked_with_its_dotted_key() -> None:
    from unirl_kit.training.config import GRPOConfig, OptimConfig, SFTConfig

    with pytest.raises(InputError, match=r"^loss_type: 'ppo' is not one of grpo, bnpo, dr_grpo, dapo$"):
        check_ranges(GRPOConfig(prompts="p.jsonl", loss_type="ppo"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^optim.schedule: 'cosine' is not one of constant, warmup_cosine$"):
        check_ranges(SFTConfig(optim=OptimConfig(schedule="cosine")))  # type: ignore[arg-type]
    check_ranges(GRPOConfig(prompts="p.jsonl"))  # the defaults are words of their vocabularies


@pytest.mark.parametrize(("cls", "item", "message"), [
    ("unirl_kit.training.config:GRPOConfig", "backbone.bf16=yes", "backbone.bf16: 'yes' is not one of auto, true, false"),
    ("unirl_kit.loop.config:LoopConfig", "train=rl", "train: 'rl' is not one of grpo, sft, both, raft"),
    ("unirl_kit.prompts.cmd:PromptsConfig", "question_style=mine", "question_style: 'mine' is not one of named, unirl"),
])
def test_every_mode_is_a_literal_checked_at_load(cls, item, message) -> None:
    """A misspelt mode fails at load, naming the key and the words it takes (bf16=yes once turned
    autocast off without a word)."""
    from unirl_kit.registry import load_target

    with pytest.raises(InputError, match=re.escape(message)):
        load_config(load_target(cls), None, {}, [item])


def test_the_loop_refuses_to_run_under_torchrun(monkeypatch) -> None:
    from unirl_kit.loop.config import LoopConfig, check_loop

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="unirl loop runs in one process"):
        check_loop(LoopConfig())


# ---------------------------------------------------------------- one backbone/sampling shape (issue 19)


def test_every_stage_shares_one_backbone_and_sampling_shape() -> None:
    """generate, score, eval understanding, the trainers and the loop hold the same two classes."""
    import typing

    from unirl_kit.backbones.config import BackboneConfig, SamplingConfig
    from unirl_kit.eval.understanding.runner import UnderstandingConfig
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.scoring.run import ScoreConfig
    from unirl_kit.training import config as training

    assert training.BackboneConfig is BackboneConfig and training.SamplingConfig is SamplingConfig
    for cls in (GenerateConfig, ScoreConfig, UnderstandingConfig, training.GRPOConfig, training.SFTConfig, LoopConfig):
        assert typing.get_type_hints(cls)["backbone"] is BackboneConfig, cls
    for cls in (GenerateConfig, training.GRPOConfig, training.SFTConfig, LoopConfig):
        assert typing.get_type_hints(cls)["sampling"] is SamplingConfig, cls


def test_a_partial_nested_mapping_keeps_its_fields_own_defaults() -> None:
    """`backbone.model=X` keeps an inference stage's `dtype: auto` (the trainers keep float32); SFT's
    `run.steps=3` keeps `run.out: runs/sft`."""
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.training.config import GRPOConfig, SFTConfig

    assert load_config(GenerateConfig, None, {}, ["backbone.model=X"]).backbone.dtype == "auto"
    assert load_config(GRPOConfig, None, {}, ["backbone.model=X"]).backbone.dtype == "float32"
    assert load_config(SFTConfig, None, {}, ["run.steps=3"]).run.out == "runs/sft"
    assert load_config(GenerateConfig, None, {}, ["backbone.dtype=bf16"]).backbone.dtype == "bf16"


def test_moved_flat_keys_are_read_where_they_live_now(tmp_path) -> None:
    """The flat keys of generate before issue 19, from a file, an override or both layers: the later layer
    wins; one layer giving both spellings fails naming the new key."""
    from unirl_kit.generation.run import GenerateConfig

    old = tmp_path / "old.yaml"
    old.write_text("backbone: janus\nmodel: A\nbackbone_options: {chat_template: true}\ncfg_scale: 3\n"
                   "temperature: 0.5\ndevice: cpu\ndtype: float32\n")
    cfg = load_config(GenerateConfig, old, {"backbone.model": "B"}, ["sampling.cfg_scale=4", "top_p=0.9"])
    assert (cfg.backbone.name, cfg.backbone.model, cfg.backbone.device, cfg.backbone.dtype) == ("janus", "B", "cpu",
                                                                                                 "float32")
    assert cfg.backbone.options == {"chat_template": True}
    assert (cfg.sampling.cfg_scale, cfg.sampling.temperature, cfg.sampling.top_p) == (4.0, 0.5, 0.9)
    assert load_config(GenerateConfig, None, {}, ["backbone=showo"]).backbone.name == "showo"
    assert load_config(GenerateConfig, None, {}, ["backbone={name: showo, model: M}"]).backbone.model == "M"
    msg = error_of(load_config, GenerateConfig, None, {}, ["cfg_scale=2", "sampling.cfg_scale=3"])
    assert msg == "command line: 'cfg_scale' moved to 'sampling.cfg_scale' and both are given; give only sampling.cfg_scale"
    old.write_text("model: A\nbackbone: {name: janus, model: B}\n")
    assert "'model' moved to 'backbone.model' and both are given" in error_of(load_config, GenerateConfig, old)


def test_greedy_sampling_is_refused_only_where_a_group_would_tie() -> None:
    from unirl_kit.backbones.config import SamplingConfig
    from unirl_kit.generation.run import GenerateConfig
    from unirl_kit.training.config import GRPOConfig

    check_ranges(GenerateConfig(sampling=SamplingConfig(temperature=0.0)))  # generate: 0 = greedy
    msg = error_of(check_ranges, GRPOConfig(prompts="p", sampling=SamplingConfig(temperature=0.0)))
    assert msg.startswith("sampling.temperature: must be > 0")


@pytest.mark.parametrize("stage", [["train", "grpo"], ["train", "sft"], ["loop"]])
def test_train_and_loop_take_the_backbone_shortcuts(stage, tmp_path) -> None:
    """`--backbone` / `--model` mean backbone.name / backbone.model in the trainers and the loop too."""
    from typer.testing import CliRunner

    from unirl_kit.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"tag": "single_object", "include": [{"class": "square", "count": 1}], '
                       '"prompt": "a photo of a square"}\n')
    out = "out" if stage == ["loop"] else "run.out"
    got = CliRunner().invoke(app, [*stage, "--backbone", "janus", "--model", str(tmp_path / "none"),
                                   f"prompts={prompts}" if stage != ["loop"] else "rounds=1", f"{out}={tmp_path / 'o'}"])
    assert got.exit_code == 2 and f"--model {tmp_path / 'none'}: no such folder" in got.output, got.output
