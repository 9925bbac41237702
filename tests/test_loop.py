"""`unirl loop` end to end on a random tiny Janus: rounds, stage markers, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirl_kit.types import InputError


@pytest.fixture(scope="module")
def small_janus(tmp_path_factory) -> Path:
    from unirl_kit.testing.tiny_janus import save_random_janus

    return save_random_janus(tmp_path_factory.mktemp("loop") / "model", text_hidden=64, text_layers=2,
                             image_size=32, seed=2)


def _cfg(model: Path, out: Path, *extra: str):
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig

    over = ["backbone.name=janus", f"backbone.model={model}", "backbone.device=cpu", f"out={out}",
            "n_train=6", "n_eval=3", "eval_group_size=2", "understanding=[clean,geneval_correct,imbalance]",
            "understanding_per_tag=1", "rewards=[geneval]", "progress=false", *extra]
    cfg = load_config(LoopConfig, None, {}, over)
    cfg.grpo_overrides = ["run.steps=2", "prompts_per_step=2", "group_size=2", "rewards=[geneval-partial]",
                          "run.tensorboard=false", "optim.micro_batch=4"]
    return cfg


def test_loop_runs_rounds_resumes_and_reports(small_janus, tmp_path):
    from unirl_kit.loop.run import run_loop

    out = tmp_path / "loop"
    report = run_loop(_cfg(small_janus, out))
    for r in (0, 1):
        folder = out / f"round-{r:03d}"
        assert (folder / "eval.done.json").exists()
        assert json.loads((folder / "geneval" / "summary.json").read_text())["total_images"] == 6
        assert (folder / "scores.jsonl").exists() and (folder / "understanding" / "summary.json").exists()
    assert (out / "round-001" / "train.done.json").exists() and (out / "round-001" / "train" / "final").is_dir()
    assert not (out / "round-000" / "train.done.json").exists()
    train_prompts = {json.loads(line)["prompt"] for line in (out / "prompts" / "train.jsonl").read_text().splitlines()}
    eval_prompts = {json.loads(line)["prompt"] for line in (out / "prompts" / "eval.jsonl").read_text().splitlines()}
    assert not train_prompts & eval_prompts
    assert (out / "report.md").exists() and (out / "report.json").exists()
    assert report["delta"] is not None and (out / "figures" / "grid.png").exists()
    # a killed loop resumes at the first unfinished stage: training is not redone
    metrics = out / "round-001" / "train" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    (out / "round-001" / "eval.done.json").unlink()
    run_loop(_cfg(small_janus, out))
    assert metrics.stat().st_mtime_ns == before
    assert (out / "round-001" / "eval.done.json").exists()


def test_loop_settings_fail_early(small_janus, tmp_path):
    from unirl_kit.loop.run import run_loop

    with pytest.raises(InputError, match="train"):
        run_loop(_cfg(small_janus, tmp_path / "bad", "train=ppo"))
    with pytest.raises(InputError, match="rounds"):
        run_loop(_cfg(small_janus, tmp_path / "bad2", "rounds=-1"))
