"""Trainer plumbing: schedules, checkpointing (metrics and tracking: tests/test_tracking.py)."""

from __future__ import annotations

import pytest

from unirl_kit.training.common import learning_rate
from unirl_kit.training.config import OptimConfig


@pytest.mark.parametrize(("schedule", "warmup", "expect"), [
    ("constant", 0, [1e-3, 1e-3, 1e-3]),
    ("constant", 2, [5e-4, 1e-3, 1e-3]),
])
def test_learning_rate_is_a_function_of_the_step(schedule, warmup, expect):
    cfg = OptimConfig(lr=1e-3, schedule=schedule, warmup_steps=warmup)
    assert [learning_rate(s, 10, cfg) for s in range(3)] == pytest.approx(expect)


def test_warmup_cosine_decays_to_the_floor():
    cfg = OptimConfig(lr=1e-3, schedule="warmup_cosine", warmup_steps=1, min_lr_ratio=0.1)
    assert learning_rate(0, 10, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, 10, cfg) == pytest.approx(1e-4)


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path):
    """Same loss and gradients with activation checkpointing on (tiny random Janus, one GRPO-style pass)."""
    import torch

    from unirl_kit.testing.tiny_janus import save_random_janus
    from unirl_kit.training.common import build_policy
    from unirl_kit.training.config import BackboneConfig, LoraConfig

    model = save_random_janus(tmp_path / "m", text_hidden=64, text_layers=2, image_size=32, seed=4)
    grads = []
    tokens = torch.randint(0, 32, (2, 64), generator=torch.Generator().manual_seed(0))
    for on in (False, True):
        policy = build_policy(BackboneConfig(name="janus", model=str(model), device="cpu",
                                             gradient_checkpointing=on), LoraConfig(), keep_reference=False)
        assert policy.backbone.num_image_tokens == tokens.shape[1]
        assert policy.model.model.language_model.gradient_checkpointing is on
        logp = policy.backbone.image_logprobs(["a photo of a red circle"], tokens, 2.0)
        logp.sum().backward()
        head = policy.model.model.generation_head
        grads.append((float(logp.sum()), next(head.parameters()).grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
