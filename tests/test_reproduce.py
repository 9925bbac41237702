"""benchmarks/reproduce_unirl_shapes.py: arms become loop settings, seeds are paired with the baseline,
round 0 is reused, and the table reports mean ± std and the paired difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import load_benchmark

from unirl_kit.types import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rep():
    return load_benchmark("reproduce_unirl_shapes")


def _committed(rep):
    from unirl_kit.config import load_config

    return load_config(rep.ReproduceConfig, ROOT / "configs" / "reproduce" / "tiny_shapes.yaml")


def test_committed_arms_become_valid_loop_configs(rep, tmp_path):
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig

    cfg = _committed(rep)
    assert set(cfg.arms) >= {"baseline", "unirl-raft", "unirl-sft", "unirl-grpo", "oracle-grpo", "oracle-raft"} and len(cfg.seeds) == 3
    for arm in cfg.arms:
        loop = load_config(LoopConfig, ROOT / cfg.loop_config, {}, rep.loop_overrides(cfg, arm, "full", 2, tmp_path))
        assert loop.eval_seed == cfg.eval_seed + 2 and loop.seed == 2  # paired: every arm of seed 2 sees the same images
        assert loop.n_eval == cfg.sizes["full"]["n_eval"] and loop.out == str(tmp_path)
        steps = f"run.steps={cfg.sizes['full']['steps']}"
        trained = loop.sft_overrides if loop.train == "sft" else loop.grpo_overrides
        assert (loop.rounds == 0) == (arm == "baseline")
        if loop.rounds:
            assert trained[-1] == steps
    grpo = load_config(LoopConfig, ROOT / cfg.loop_config, {}, rep.loop_overrides(cfg, "unirl-grpo", "small", 0, tmp_path))
    assert grpo.grpo_overrides[0].startswith("rewards=[self-qa")
    # the loop config's trainer configs are found from any working directory
    assert grpo.grpo_config == str(ROOT / "configs" / "grpo" / "tiny_shapes.yaml")
    assert grpo.sft_config == str(ROOT / "configs" / "sft" / "tiny_shapes.yaml")


def test_unknown_size_or_arm_is_one_clear_error(rep, tmp_path):
    cfg = _committed(rep)
    with pytest.raises(InputError, match="--size 'huge'.*smoke"):
        rep.loop_overrides(cfg, "baseline", "huge", 0, tmp_path)
    with pytest.raises(InputError, match="--arms 'ppo'.*unirl-grpo"):
        rep.loop_overrides(cfg, "ppo", "small", 0, tmp_path)


def _row(arm, seed, overall, clean=0.8, imbalance=0.2, train=10.0):
    return {"arm": arm, "seed": seed, "seconds_this_run": train + 5, "train_seconds": train,
            "geneval": {"overall": overall, "tags": {"colors": overall}},
            "clean": {"overall": clean, "accuracy": {"colors": clean}}, "imbalance": {"imbalance": imbalance}}


def test_table_pairs_each_seed_with_its_baseline(rep):
    rows = [_row("baseline", 0, 0.40), _row("baseline", 1, 0.50), _row("unirl-grpo", 0, 0.45), _row("unirl-grpo", 1, 0.65)]
    assert rep.paired_deltas(rows, "unirl-grpo") == pytest.approx([0.05, 0.15])
    text = rep.table(rows, ["baseline", "unirl-grpo"])
    lines = text.splitlines()
    assert lines[0].startswith("| arm | seeds | GenEval overall | Δ vs baseline (paired)")
    assert "| baseline | 2 | 0.450 ± 0.071 |  |" in lines[2]
    assert "| unirl-grpo | 2 | 0.550 ± 0.141 | 0.100 ± 0.071 |" in lines[3]


def test_end_to_end_reuses_the_baseline_round(rep, tmp_path):
    """Baseline and one GRPO arm on a random tiny Janus: the arm's round 0 is the baseline's, not redone."""
    from unirl_kit.config import load_config
    from unirl_kit.testing.tiny_janus import save_random_janus

    model = save_random_janus(tmp_path / "model", text_hidden=64, text_layers=2, image_size=32, seed=2)
    loop = {"backbone": {"name": "janus", "model": str(model), "device": "cpu"}, "n_train": 4,
            "understanding": ["geneval_correct", "imbalance"], "rewards": ["geneval"]}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop))
    spec = {"loop_config": str(tmp_path / "loop.yaml"), "seeds": [0], "eval_seed": 7,
            "sizes": {"tiny": {"n_eval": 2, "eval_group_size": 2, "understanding_per_tag": 1, "steps": 1}},
            "arms": {"baseline": {"rounds": 0},
                     "grpo": {"rounds": 1, "train": "grpo", "grpo_overrides": [
                         "rewards=[geneval-partial]", "prompts_per_step=2", "group_size=2", "run.report_to=[jsonl]"]}}}
    (tmp_path / "rep.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_config(rep.ReproduceConfig, tmp_path / "rep.yaml")
    root = tmp_path / "out"
    base = rep.run_arm(cfg, "baseline", 0, "tiny", root)
    done = root / "baseline" / "seed0" / "round-000" / "eval.done.json"
    arm = rep.run_arm(cfg, "grpo", 0, "tiny", root)
    copied = root / "grpo" / "seed0" / "round-000" / "eval.done.json"
    assert copied.read_text() == done.read_text()
    report = json.loads((root / "grpo" / "seed0" / "report.json").read_text())
    assert report["rounds"][0]["geneval"] == base["geneval"] and len(report["rounds"]) == 2
    assert arm["train_seconds"] > 0 and base["train_seconds"] == 0.0
    assert rep.paired_deltas([base, arm], "grpo") == [arm["geneval"]["overall"] - base["geneval"]["overall"]]
    # a later run given other arms still tables what is finished on disk
    found = rep.finished_rows(cfg, root, {("grpo", 0)})
    assert [(r["arm"], r["seed"]) for r in found] == [("baseline", 0)] and found[0]["geneval"] == base["geneval"]
