"""Experiment tracking (`report_to`): jsonl and TensorBoard read back, W&B offline or its missing-extra
error, the old `run.tensorboard` key, and a tiny GRPO run whose scalars reach TensorBoard."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unirl_kit.config import load_config
from unirl_kit.tracking import MetricsLog, Tracker, check_report_to
from unirl_kit.training.config import GRPOConfig, SFTConfig, check_grpo
from unirl_kit.types import InputError


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_and_images_read_back(tmp_path):
    with Tracker(tmp_path, ["jsonl"]) as tracker:
        tracker.log_scalars(1, {"step": 1, "reward/mean": 0.5, "note": "text"})
        tracker.log_scalars(2, {"reward/mean": 0.75})
        tracker.log_image("eval/samples", 2, np.full((4, 6, 3), 200, dtype=np.uint8))
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5, "note": "text"},
                                                  {"step": 2, "reward/mean": 0.75}]
    image = Image.open(tmp_path / "images" / "eval" / "samples" / "000002.png")
    assert image.size == (6, 4) and image.getpixel((0, 0)) == (200, 200, 200)


def test_resumed_jsonl_drops_lines_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, 0)
    for step in (1, 2, 3):
        log.scalars(step, {"loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "lo')  # a torn line from a kill
    MetricsLog(tmp_path, 2)
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_tensorboard_scalars_and_images_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    with Tracker(tmp_path, ["tensorboard"]) as tracker:
        for step in (1, 2, 3):
            tracker.log_scalars(step, {"step": step, "reward/mean": step / 10, "kept": True, "note": "x"})
        tracker.log_image("eval/samples", 1, np.zeros((8, 10, 3), dtype=np.uint8))
    # a resume from step 1 replaces what the killed run logged after it
    with Tracker(tmp_path, ["tensorboard"], resumed_step=1) as tracker:
        tracker.log_scalars(2, {"reward/mean": 0.9})
    acc = _events(tmp_path / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {"reward/mean"}  # bools and text are no scalars
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("reward/mean")] == [(1, 0.1), (2, 0.9)]
    (image,) = acc.Images("eval/samples")
    assert (image.step, image.width, image.height) == (1, 10, 8)


def test_unknown_or_missing_backends_are_one_line_errors(monkeypatch):
    with pytest.raises(InputError, match=r"run.report_to: 'tensorbord' is not one of jsonl, tensorboard, wandb"):
        check_report_to(["jsonl", "tensorbord"], "run.report_to")
    with pytest.raises(InputError, match="jsonl is given twice"):
        check_report_to(["jsonl", "jsonl"], "run.report_to")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(InputError, match=r"wandb is not installed; pip install 'unirl-kit\[wandb\]'"):
        check_report_to(["wandb"], "run.report_to")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(InputError, match="tensorboard is not installed; pip install tensorboard"):
        check_report_to(["tensorboard"], "report_to")


def test_trainer_refuses_a_missing_wandb_before_loading_a_model(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config(GRPOConfig, None, {}, ["prompts=p.jsonl", "run.report_to=[jsonl,wandb]", "backbone.name=nope"])
    with pytest.raises(InputError, match=r"^run.report_to: wandb is not installed; pip install 'unirl-kit\[wandb\]'"):
        check_grpo(cfg)


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Tracker(tmp_path, ["wandb"], config={"lr": 0.1}, name="test") as tracker:
        tracker.log_scalars(1, {"reward/mean": 0.5})
        tracker.log_image("eval/samples", 1, np.zeros((8, 8, 3), dtype=np.uint8))
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")) and list((run / "files" / "media" / "images").rglob("*.png"))


@pytest.mark.parametrize(("given", "expect"), [
    (["run.tensorboard=false"], ["jsonl"]),
    (["run.tensorboard=true"], ["jsonl", "tensorboard"]),
    (["run.tensorboard=false", "run.report_to=[jsonl]"], ["jsonl"]),
    (["run.report_to=[wandb]"], ["wandb"]),
    (["run.report_to=wandb"], ["wandb"]),  # one name alone, as TRL takes it
    (["run.report_to=none"], []),
])
def test_old_tensorboard_key_maps_onto_report_to(given, expect):
    for cls in (GRPOConfig, SFTConfig):
        run = load_config(cls, None, {}, given).run
        assert run.report_to == expect and run.tensorboard is None


def test_old_tensorboard_key_in_a_config_file_and_its_contradiction(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("run:\n  steps: 3\n  tensorboard: false\n")
    assert load_config(GRPOConfig, path).run.report_to == ["jsonl"]
    with pytest.raises(InputError, match=r"run.tensorboard: the old key \(true\) contradicts run.report_to"):
        load_config(GRPOConfig, path, {}, ["run.tensorboard=true", "run.report_to=[jsonl,wandb]"])


def test_grpo_scalars_reach_tensorboard_and_progress_lines_reach_a_log(small_janus, prompts, tmp_path,
                                                                       monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    from unirl_kit import progress
    from unirl_kit.testing.rewards import BRIGHTNESS, register_test_rewards
    from unirl_kit.training.grpo import run_grpo

    register_test_rewards()
    monkeypatch.setattr(progress, "interactive", lambda: False)  # as under nohup / SLURM
    out = tmp_path / "run"
    cfg = load_config(GRPOConfig, None, {}, [
        f"prompts={prompts}", "prompts_per_step=2", "group_size=2", f"rewards=[{BRIGHTNESS}]", "backbone.name=janus",
        f"backbone.model={small_janus}", "backbone.device=cpu", "optim.micro_batch=4", f"run.out={out}",
        "run.steps=2", "run.checkpoint_every=2", "sampling.cfg_scale=2.0", "run.report_to=[jsonl,tensorboard]"])
    with caplog.at_level(logging.INFO, logger="unirl_kit.train"):
        run_grpo(cfg)
    rows = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    acc = _events(out / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    for key in ("reward/mean", f"reward/{BRIGHTNESS}/mean", "zero_std_share/gen", "entropy/gen", "grad_norm", "lr",
                "time/generate", "time/update", "loss/gen"):
        assert key in tags, key
        assert [e.step for e in acc.Scalars(key)] == [1, 2]
    assert acc.Scalars("grad_norm")[1].value == pytest.approx(rows[1]["grad_norm"], rel=1e-5)
    lines = [r.getMessage() for r in caplog.records if r.name == "unirl_kit.train"]
    assert lines[-1].startswith("train grpo: 2/2 steps (100%)") and "done in" in lines[-1] and "reward=" in lines[-1]
