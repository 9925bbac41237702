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
                          "optim.micro_batch=4"]
    return cfg


def _tracked(out: Path) -> tuple[list[dict], object]:
    """The loop's metrics.jsonl rows and its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], acc


def test_loop_runs_rounds_resumes_and_reports(small_janus, tmp_path, monkeypatch, caplog):
    import logging

    from unirl_kit import progress
    from unirl_kit.loop.run import run_loop

    monkeypatch.setattr(progress, "interactive", lambda: False)  # a log file: every stage writes lines
    out = tmp_path / "loop"
    with caplog.at_level(logging.INFO, logger="unirl_kit"):
        report = run_loop(_cfg(small_janus, out, "progress=true"))
    names = {r.name for r in caplog.records}
    assert {"unirl_kit.loop", "unirl_kit.generate", "unirl_kit.eval.geneval", "unirl_kit.score",
            "unirl_kit.eval.understanding", "unirl_kit.train"} <= names
    assert "round 1/1: train (grpo)" in [r.getMessage() for r in caplog.records]
    rows, acc = _tracked(out)  # each round's eval metrics and sample grid, to every backend
    assert [r["step"] for r in rows] == [0, 1] and all("geneval/overall" in r for r in rows)
    assert "understanding/clean/overall" in rows[0] and "reward/geneval/mean" in rows[0]
    assert [e.step for e in acc.Scalars("geneval/overall")] == [0, 1]
    assert [i.step for i in acc.Images("eval/samples")] == [0, 1]
    assert (out / "images" / "eval" / "samples" / "000001.png").is_file()
    assert (out / "round-001" / "train" / "tensorboard").is_dir()  # the trainer got the loop's report_to
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
    rows, acc = _tracked(out)  # round 1 logged again, not twice
    assert [r["step"] for r in rows] == [0, 1] and [e.step for e in acc.Scalars("geneval/overall")] == [0, 1]


def test_loop_settings_fail_early(small_janus, tmp_path):
    from unirl_kit.loop.run import run_loop

    with pytest.raises(InputError, match="train"):
        run_loop(_cfg(small_janus, tmp_path / "bad", "train=ppo"))
    with pytest.raises(InputError, match="rounds"):
        run_loop(_cfg(small_janus, tmp_path / "bad2", "rounds=-1"))
    with pytest.raises(InputError, match="world coco needs a real detector"):
        run_loop(_cfg(small_janus, tmp_path / "bad3", "world=coco"))
    with pytest.raises(InputError, match=r"detector_options\.model"):  # before round 0's images, not after
        run_loop(_cfg(small_janus, tmp_path / "bad4", "detector=mask2former"))
    assert not (tmp_path / "bad4" / "round-000").exists()


def test_a_detector_without_its_required_option_is_one_line(unirl_cli, tiny_geneval_dir, tmp_path):
    result = unirl_cli("eval", "geneval", tiny_geneval_dir, "--out", tmp_path / "ev", "--detector", "mask2former",
                       check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: detectors.mask2former: needs option 'model' (give detector_options.model=...)"


@pytest.mark.parametrize("name", ["janus_pro_1b", "janus_pro_7b"])
def test_gpu_loop_configs_run_with_a_tiny_random_janus(small_janus, tmp_path, name):
    """The shipped GPU configs, with overrides that swap in a tiny random Janus and tiny sizes: SFT (e2e,
    gradient checkpointing) then GRPO (LoRA for 7B), evaluation and report, on the CPU."""
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(LoopConfig, root / "configs" / "loop" / f"{name}.yaml", {}, [
        f"backbone.model={small_janus}", "backbone.device=cpu", f"out={tmp_path / name}", "rounds=1", "world=shapes", "detector=shapes",
        "n_train=6", "n_eval=2", "eval_group_size=2", "understanding=[geneval_correct,imbalance]", "progress=false",
        f"grpo_config={root / 'configs/grpo/janus_pro_1b.yaml'}", f"sft_config={root / 'configs/sft/janus_pro_1b.yaml'}"])
    tiny = ["run.steps=1", "prompts_per_step=2", "group_size=2", "optim.micro_batch=4", "run.report_to=[jsonl]"]
    cfg.grpo_overrides = [*cfg.grpo_overrides, *tiny, "sampling.cfg_scale=2.0"]
    cfg.sft_overrides = [*cfg.sft_overrides, *tiny]
    report = run_loop(cfg)
    assert report["delta"] is not None
    assert (tmp_path / name / "round-001" / "train_sft" / "final").is_dir()
    assert (tmp_path / name / "round-001" / "train" / "final").is_dir()


def test_loop_offline_raft_round_and_paired_report(small_janus, tmp_path):
    """`train: raft`: the round draws and judges images of the training prompts, distills the best of each,
    and the report gives the paired GenEval delta with its n (3 prompts: too few for an interval)."""
    from unirl_kit.loop.run import run_loop
    from unirl_kit.testing.rewards import LOW_TOKENS, register_test_rewards

    register_test_rewards()
    out = tmp_path / "raft"
    cfg = _cfg(small_janus, out, "train=raft")
    cfg.sft_overrides = [f"rewards=[{LOW_TOKENS}]", "group_size=2", "keep_top=1", "prompts_per_step=2",
                         "run.steps=2", "run.report_to=[jsonl]", "sampling.cfg_scale=2.0"]
    report = run_loop(cfg)
    folder = out / "round-001"
    assert len((folder / "train_samples" / "scores.jsonl").read_text().splitlines()) == 6 * 2
    rows = [json.loads(line) for line in (folder / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in rows] == [2, 2]
    paired = report["delta"]["geneval"]["overall"]
    assert paired["prompts"] == 3 and paired["images"] == 6 and paired["paired"]
    assert paired["ci"] is None and paired["note"] == "no interval: n < 4"  # 3 prompts: too few for one
    md = (out / "report.md").read_text()
    assert "(no interval: n < 4), n = 3 prompts / 6 images" in md
    assert (folder / "contact_sheet.png").is_file() and "round-001/contact_sheet.png" in md
