"""A resume is the same run: `unirl train --resume` and a `unirl loop` rerun refuse run-defining settings
other than the saved config.yaml's (naming every differing key, before the model loads, leaving
config.yaml as it was), and accept the settings RESUME_MAY_CHANGE lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirl_kit.config import RESUME_MAY_CHANGE, check_same_run, load_config, write_run_info
from unirl_kit.testing.rewards import BRIGHTNESS, register_test_rewards
from unirl_kit.training.config import GRPOConfig
from unirl_kit.types import InputError


def _grpo(out: Path, prompts: Path, *over: str) -> GRPOConfig:
    base = [f"prompts={prompts}", f"rewards=[{BRIGHTNESS}]", "backbone.name=janus",
            f"backbone.model={out.parent / 'no-such-model'}", "backbone.device=cpu", f"run.out={out}",
            "run.progress=false", "run.report_to=[jsonl]", "sampling.cfg_scale=2.0"]
    return load_config(GRPOConfig, None, {}, [*base, *over])


def test_only_listed_settings_may_change(tmp_path, prompts):
    write_run_info(tmp_path, _grpo(tmp_path, prompts), "train grpo")
    may = ["run.steps=40", "run.progress=true", "run.checkpoint_every=5", "run.log_every=3", "backbone.fsdp=true",
           "optim.micro_batch=2", f"run.out={tmp_path}"]
    check_same_run(tmp_path, _grpo(tmp_path, prompts, *may), "train grpo")
    assert all(k.split("=")[0] in RESUME_MAY_CHANGE["train"] for k in may)
    with pytest.raises(InputError) as err:
        check_same_run(tmp_path, _grpo(tmp_path, prompts, "optim.lr=0.5", "reward_options.x.judge=reference",
                                       "run.steps=99"), "train grpo")
    message = str(err.value)
    assert "optim.lr: 1e-05 -> 0.5" in message and "reward_options.x.judge: '(absent)' -> 'reference'" in message
    assert "run.steps" not in message and "\n" not in message
    with pytest.raises(InputError, match="command"):  # another recipe's folder
        check_same_run(tmp_path, _grpo(tmp_path, prompts), "train sft")


def test_a_guidance_scale_not_resolved_yet_is_checked_later(tmp_path, prompts):
    write_run_info(tmp_path, _grpo(tmp_path, prompts), "train grpo")
    unresolved = _grpo(tmp_path, prompts, "sampling.cfg_scale=null")
    check_same_run(tmp_path, unresolved, "train grpo", ("sampling.cfg_scale",))
    with pytest.raises(InputError, match="sampling.cfg_scale"):
        check_same_run(tmp_path, unresolved, "train grpo")


def test_train_resume_with_other_settings_fails_before_the_model_loads(tmp_path, prompts):
    from unirl_kit.training.grpo import run_grpo

    register_test_rewards()
    out = tmp_path / "run"
    write_run_info(out, _grpo(out, prompts), "train grpo")
    (out / "checkpoints" / "step-0000002").mkdir(parents=True)
    saved = (out / "config.yaml").read_bytes()
    with pytest.raises(InputError, match=r"group_size: 4 -> 8; optim\.lr") as err:  # the model path is never read
        run_grpo(_grpo(out, prompts, "optim.lr=0.001", "group_size=8"), resume=True)
    assert "\n" not in str(err.value)
    assert (out / "config.yaml").read_bytes() == saved


def test_a_loop_rerun_with_other_settings_is_refused(tmp_path):
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    out = tmp_path / "loop"
    cfg = load_config(LoopConfig, None, {}, [f"out={out}", "progress=false"])
    write_run_info(out, cfg, "loop")
    (out / "prompts").mkdir()  # the loop has started: its prompts are drawn
    saved = (out / "config.yaml").read_bytes()
    with pytest.raises(InputError, match="grpo_overrides.*n_eval: 60 -> 5"):
        run_loop(load_config(LoopConfig, None, {}, [f"out={out}", "n_eval=5", "grpo_overrides=[optim.lr=1]"]))
    assert (out / "config.yaml").read_bytes() == saved
    check_same_run(out, load_config(LoopConfig, None, {}, [f"out={out}", "rounds=3", "batch_size=4"]), "loop")


def test_saved_config_json_values_compare_as_saved(tmp_path, prompts):
    """A list of rewards and a dict of options read back from YAML equal the config they came from."""
    cfg = _grpo(tmp_path, prompts, f"rewards=[{BRIGHTNESS},{BRIGHTNESS}:0.5]",
                f"backbone.options={json.dumps({'timesteps': 8})}")
    write_run_info(tmp_path, cfg, "train grpo")
    check_same_run(tmp_path, cfg, "train grpo")


def test_a_path_spelled_otherwise_is_the_same_run(tmp_path, prompts, monkeypatch):
    """The prompts file given relative to another working directory, or absolute, is the same setting."""
    write_run_info(tmp_path, _grpo(tmp_path, prompts), "train grpo")
    monkeypatch.chdir(prompts.parent.parent)
    check_same_run(tmp_path, _grpo(tmp_path, Path(prompts.parent.name) / prompts.name), "train grpo")
    other = tmp_path / "other.jsonl"
    other.write_bytes(prompts.read_bytes())
    with pytest.raises(InputError, match="prompts: "):  # a copy is another file
        check_same_run(tmp_path, _grpo(tmp_path, other), "train grpo")


def test_a_prompts_file_rewritten_in_place_is_refused_on_resume(tmp_path, prompts):
    from unirl_kit.training.recipe import INPUTS, check_same_inputs, input_digests

    mine = tmp_path / "p.jsonl"
    mine.write_bytes(prompts.read_bytes())
    cfg = _grpo(tmp_path, mine)
    (tmp_path / INPUTS).write_text(json.dumps(input_digests(cfg)))
    check_same_inputs(tmp_path, input_digests(cfg), resuming=True)
    mine.write_text(mine.read_text().splitlines()[0] + "\n")  # same path, other prompts
    with pytest.raises(InputError, match=r"its run read another prompts \(sha256 [0-9a-f]{12}\.\.\., now"):
        check_same_inputs(tmp_path, input_digests(cfg), resuming=True)
    check_same_inputs(tmp_path, input_digests(cfg), resuming=False)  # a fresh run checks nothing
    (tmp_path / INPUTS).write_text("[1]")
    with pytest.raises(InputError, match=r"inputs.json: expected a JSON object of file digests"):
        check_same_inputs(tmp_path, input_digests(cfg), resuming=True)
