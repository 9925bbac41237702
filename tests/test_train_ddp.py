"""Data parallel without FSDP (DDP over the model, gradients all-reduced in the backward of each
optimizer step's last micro-batch): 2 gloo processes == 1 process on the same global batch, where DDP
has the most to get wrong: the joint target (the generation head is unused by the `und` micro-batches
that close each pass, so its gradient is synced from what earlier micro-batches accumulated), two
policy passes, micro-batches of one row, LoRA (only the adapters are DDP's parameters) and gradient
checkpointing (recomputed forwards inside DDP's backward)."""

from __future__ import annotations

import pytest
import test_train_fsdp
from test_train_fsdp import _cfg, _final, _metrics, _spawn, _train, _worst

model_dir, prompts = test_train_fsdp.model_dir, test_train_fsdp.prompts  # its module-scoped fixtures

TOL = 5e-5  # float rounding of the 2-way average at lr 1e-3 (see test_train_grpo); a sync error is ~lr


def test_ddp_matches_fsdp_on_the_joint_target_and_one_process_with_lora_or_checkpointing(model_dir, prompts, tmp_path):
    """joint: DDP == FSDP on 2 ranks (the und answers are sampled per rank, so 1 process draws others);
    LoRA and gradient checkpointing: 2 DDP ranks == 1 process."""
    joint = {"target": "joint", "num_iterations": 2, "beta": 0.05, "und_max_new_tokens": 4}
    lora = {"lora.enabled": True, "lora.r": 4, "lora.alpha": 8, "optim.lr": 1e-2}
    ckpt = {"backbone.gradient_checkpointing": True}  # recomputation inside DDP's backward
    _train("grpo", _cfg("grpo", model_dir, prompts, tmp_path / "lora-one", lora))
    _train("grpo", _cfg("grpo", model_dir, prompts, tmp_path / "ckpt-one", ckpt))
    m, p = str(model_dir), str(prompts)
    _spawn([("grpo", m, p, str(tmp_path / "joint-ddp"), joint, False),
            ("grpo", m, p, str(tmp_path / "joint-fsdp"), {**joint, "backbone.fsdp": True}, False),
            ("grpo", m, p, str(tmp_path / "lora-two"), lora, False),
            ("grpo", m, p, str(tmp_path / "ckpt-two"), ckpt, False)])
    for a, b in (("joint-ddp", "joint-fsdp"), ("lora-one", "lora-two"), ("ckpt-one", "ckpt-two")):
        one, two = _metrics(tmp_path / a), _metrics(tmp_path / b)
        assert [r["reward/mean"] for r in one] == [r["reward/mean"] for r in two]
        assert [r["grad_norm"] for r in one] == [pytest.approx(r["grad_norm"], rel=1e-4, abs=1e-6) for r in two]
        assert _worst(_final(tmp_path / a), _final(tmp_path / b)) < TOL, (a, b)
    ddp = _metrics(tmp_path / "joint-ddp")
    assert ddp[1]["kl/und"] > 0 and ddp[1]["kl/gen"] > 0  # both halves trained, each with its reference


def test_sft_und_and_e2e_two_ddp_processes_match_one(model_dir, prompts, tmp_path):
    """SFT's und (answer NLL, vision and LM) and e2e (through the straight-through image) modes: the same
    losses and weights from 2 DDP ranks as from 1 process."""
    modes = {"und": {"mode": "und"}, "e2e": {"mode": "e2e"}}
    for name, over in modes.items():
        _train("sft", _cfg("sft", model_dir, prompts, tmp_path / f"{name}-one", over))
    m, p = str(model_dir), str(prompts)
    _spawn([("sft", m, p, str(tmp_path / f"{name}-two"), over, False) for name, over in modes.items()])
    for name in modes:
        one, two = _metrics(tmp_path / f"{name}-one"), _metrics(tmp_path / f"{name}-two")
        assert [r["loss/sft"] for r in one] == [pytest.approx(r["loss/sft"], rel=1e-5) for r in two], name
        assert _worst(_final(tmp_path / f"{name}-one"), _final(tmp_path / f"{name}-two")) < TOL, name
