"""GRPO numerics vs TRL: the real `GRPOTrainer` methods run on a minimal fake `self`, not a copy of their formulas."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from unirl_kit.training.grpo_math import entropy_from_logits, group_advantages, k3_kl, policy_loss

pytest.importorskip("trl")  # a dev extra; once installed, a broken import must fail, not skip
from trl.trainer import utils as trl_utils  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402


class _OneProcess:
    """Stands in for `accelerate.Accelerator` on a single process: gather and reduce are identities."""

    device = torch.device("cpu")
    process_index = 0
    num_processes = 1
    sync_gradients = True

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce(self, t: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return t


def _metrics() -> defaultdict:
    return defaultdict(lambda: defaultdict(list))


def trl_advantages(rewards: torch.Tensor, group_size: int, scale: str) -> tuple[torch.Tensor, float]:
    """Run TRL's `_generate_and_score_completions` with generation and reward calls stubbed to `rewards`.

    Returns TRL's advantages and its logged `frac_reward_zero_std`. Every attribute TRL reads must be
    given here (SimpleNamespace raises otherwise), so a TRL change that reads more state fails loudly.
    """
    n = rewards.numel()
    lengths = [1 + i % 3 for i in range(n)]  # ragged completions, as generation would give
    fake = SimpleNamespace(
        accelerator=_OneProcess(),
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        args=SimpleNamespace(
            per_device_train_batch_size=n,
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            gradient_checkpointing_kwargs=None,
        ),
        environment_factories=None,
        environments=None,
        tools=[],
        _generate=lambda prompts: (
            [[5, 6]] * len(prompts),
            [[7] * k for k in lengths],
            None,
            ["completion"] * len(prompts),
            None,
            None,
            None,
            None,
        ),
        _tokenizer=SimpleNamespace(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        num_iterations=1,
        use_vllm=False,
        beta=0.0,
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards.unsqueeze(1).clone(),
        num_generations=group_size,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1, dtype=rewards.dtype),
        scale_rewards=scale,
        reward_func_names=["r"],
        _metrics=_metrics(),
        _logs={
            "prompt": [],
            "completion": [],
            "advantages": [],
            "rewards": defaultdict(list),
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    out = GRPOTrainer._generate_and_score_completions(fake, [{"prompt": f"p{i}"} for i in range(n)])
    return out["advantages"], fake._metrics["train"]["frac_reward_zero_std"][-1]


def trl_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    epsilon: float,
    epsilon_high: float | None,
    max_completion_length: int,
    num_items: float,
) -> tuple[torch.Tensor, dict]:
    """Call the real unbound `GRPOTrainer._compute_loss` with the model forward stubbed to return `logp`."""
    b, t = logp.shape
    fake = SimpleNamespace(
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        importance_sampling_level="token",
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length,
        accelerator=_OneProcess(),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        model=SimpleNamespace(training=True),
        _metrics=_metrics(),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp.detach()), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "num_items_in_batch": torch.tensor(num_items, dtype=logp.dtype),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if beta != 0.0:
        inputs["ref_per_token_logps"] = ref_logp
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, {k: v[-1] for k, v in fake._metrics["train"].items()}


def _rewards_with_ties(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (6, 4), generator=g).to(dtype) + torch.rand(6, 4, generator=g, dtype=dtype).round(
        decimals=1
    )
    r[1] = 0.7  # an all-equal group
    r[4] = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=dtype)  # ties but not all equal
    return r.reshape(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_advantages_match_trl(scale: str, dtype: torch.dtype) -> None:
    rewards = _rewards_with_ties(dtype)
    ours, zero_std = group_advantages(rewards, 4, scale=scale)
    theirs, frac_zero = trl_advantages(rewards, 4, scale)
    # TRL's nanstd computes its Bessel factor count / (count - 1) from integer tensors, i.e. in float32,
    # so even float64 rewards get a std with ~1.5e-8 relative error; we use torch.std in the input dtype.
    tol = 1e-7 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    assert ours.dtype == dtype
    assert zero_std.tolist() == [False] * 4 + [True] * 4 + [False] * 16
    assert ours[4:8].eq(0).all()  # exact, where TRL may leave rounding residue
    if scale != "batch":  # in "batch" mode TRL flags on the batch std; we always flag per group
        assert zero_std.float().mean().item() == pytest.approx(frac_zero)


def test_advantages_hand_computed_and_nanstd() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert trl_utils.nanstd(rewards[:4]).item() == pytest.approx(0.5, rel=1e-7)  # float32 Bessel factor
    adv, zero_std = group_advantages(rewards, 4)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], dtype=torch.float64) / torch.tensor(
        [0.5001] * 4 + [1.0] * 4, dtype=torch.float64
    )
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-15)
    assert zero_std.tolist() == [False] * 4 + [True] * 4
    batch_std = trl_utils.nanstd(rewards).item()
    adv_b, _ = group_advantages(rewards, 4, scale="batch")
    assert adv_b[0].item() == pytest.approx(0.75 / (batch_std + 1e-4), rel=1e-7)
    adv_n, _ = group_advantages(rewards, 4, scale="none")
    assert adv_n.tolist() == [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]


def _batch(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 6, 9
    lengths = torch.tensor([9, 1, 5, 0, 7, 3])  # ragged, with an empty row
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 3
    logp = old + 0.4 * torch.randn(b, t, generator=g, dtype=dtype)  # ratios well outside [0.8, 1.28]
    ref = old + 0.2 * torch.randn(b, t, generator=g, dtype=dtype)
    adv = torch.tensor([1.3, -0.7, 0.0, 0.9, -1.6, 0.4], dtype=dtype)  # both signs, and a zero
    return {"logp": logp, "old": old, "ref": ref, "adv": adv, "mask": mask}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_matches_trl(
    loss_type: str, beta: float, epsilon_high: float | None, dtype: torch.dtype
) -> None:
    x = _batch(dtype)
    b, t = x["logp"].shape
    max_len = t + 3  # dr_grpo normalizes by the configured maximum, not the batch's T
    num_items = float(x["mask"].sum()) + 11  # dapo: tokens elsewhere in the global batch count too
    ours_in = x["logp"].clone().requires_grad_(True)
    theirs_in = x["logp"].clone().requires_grad_(True)
    loss, stats = policy_loss(
        ours_in, x["old"], x["adv"], x["mask"], epsilon=0.2, epsilon_high=epsilon_high, beta=beta,
        ref_logp=x["ref"], loss_type=loss_type, max_tokens=max_len, num_items=num_items,
    )  # fmt: skip
    trl, metrics = trl_loss(
        theirs_in, x["old"], x["adv"], x["mask"], x["ref"], loss_type=loss_type, beta=beta, epsilon=0.2,
        epsilon_high=epsilon_high, max_completion_length=max_len, num_items=num_items,
    )  # fmt: skip
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(loss, trl, rtol=tol, atol=tol)
    (g_ours,) = torch.autograd.grad(loss, ours_in)
    (g_trl,) = torch.autograd.grad(trl, theirs_in)
    torch.testing.assert_close(g_ours, g_trl, rtol=tol, atol=tol)
    assert g_ours[x["mask"] == 0].eq(0).all()

    # the batch really exercises both clip regions
    assert metrics["clip_ratio/low_mean"] > 0.05 and metrics["clip_ratio/high_mean"] > 0.05
    # TRL takes its clip fractions in float32 (`.float()`), whatever the input dtype
    assert stats["clip_ratio"].item() == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    assert stats["clip_ratio_low"].item() == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
    assert stats["clip_ratio_high"].item() == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)
    if beta != 0.0:
        assert stats["kl"].item() == pytest.approx(metrics["kl"], abs=tol)
    else:
        assert "kl" not in stats
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_defaults_match_trl_on_policy(loss_type: str) -> None:
    """Defaults (max_tokens=T, num_items=mask.sum()) and TRL's on-policy path (old = logp.detach())."""
    x = _batch(torch.float64, seed=1)
    t = x["logp"].shape[1]
    ours_in = x["logp"].clone().requires_grad_(True)
    theirs_in = x["logp"].clone().requires_grad_(True)
    loss, stats = policy_loss(ours_in, ours_in.detach(), x["adv"], x["mask"], loss_type=loss_type)
    trl, _ = trl_loss(
        theirs_in, None, x["adv"], x["mask"], x["ref"], loss_type=loss_type, beta=0.0, epsilon=0.2,
        epsilon_high=None, max_completion_length=t, num_items=float(x["mask"].sum()),
    )  # fmt: skip
    torch.testing.assert_close(loss, trl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(loss, ours_in)[0], torch.autograd.grad(trl, theirs_in)[0], rtol=1e-12, atol=1e-12
    )
    assert stats["ratio_mean"].item() == 1.0 and stats["clip_ratio"].item() == 0.0


def test_zero_std_groups_give_zero_loss_and_gradient() -> None:
    rewards = torch.tensor([3.0, 3.0, 3.0, -1.0, -1.0, -1.0])
    adv, zero_std = group_advantages(rewards, 3)
    assert adv.eq(0).all() and not adv.isnan().any() and zero_std.all()
    # float32, K=8: the mean of eight 0.7s is not 0.7, so TRL gives ~6e-4 advantages here and its
    # isclose(std, 0) check misses the tie; ties are detected exactly here
    adv8, flags8 = group_advantages(torch.full((16,), 0.7), 8)
    assert adv8.eq(0).all() and flags8.all()
    for scale in ("batch", "none"):
        adv_s, flags = group_advantages(rewards, 3, scale=scale)
        assert adv_s.eq(0).all() and flags.all()
    x = _batch(torch.float32)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        logp = x["logp"].clone().requires_grad_(True)
        loss, _ = policy_loss(logp, x["old"], adv, x["mask"], loss_type=loss_type)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0.0 and grad.eq(0).all()


def test_padding_garbage_cannot_poison_loss() -> None:
    x = _batch(torch.float64)
    pad = x["mask"] == 0
    logp = x["logp"].masked_fill(pad, -math.inf).requires_grad_(True)
    old = x["old"].masked_fill(pad, math.nan)
    loss, stats = policy_loss(
        logp, old, x["adv"], x["mask"], beta=0.04, ref_logp=x["ref"].masked_fill(pad, 1e9)
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad[pad].eq(0).all()
    assert all(torch.isfinite(v) for v in stats.values())


def test_k3_kl_and_entropy() -> None:
    g = torch.Generator().manual_seed(2)
    logp, ref = -torch.rand(4, 5, generator=g), -torch.rand(4, 5, generator=g)
    kl = k3_kl(logp, ref)
    assert kl.ge(0).all() and k3_kl(logp, logp).eq(0).all()
    logits = torch.randn(3, 7, 50, generator=g, dtype=torch.float64)
    ent = entropy_from_logits(logits, chunk_size=4)
    torch.testing.assert_close(ent, trl_utils.entropy_from_logits(logits), rtol=1e-12, atol=1e-12)
    assert entropy_from_logits(torch.zeros(2, 8)).sub(math.log(8)).abs().max() < 1e-6
    masked = torch.tensor([[0.0, -math.inf, 0.0, -math.inf]])
    assert entropy_from_logits(masked).item() == pytest.approx(math.log(2))
    assert entropy_from_logits(torch.zeros(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_errors() -> None:
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="index 2 is not finite"):
        group_advantages(torch.tensor([0.0, 1.0, math.nan, 1.0, math.inf, 0.0]), 2)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(torch.zeros(4), 2, scale="global")
    x = _batch(torch.float32)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(x["logp"], x["old"], x["adv"], x["mask"], beta=0.1)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        policy_loss(x["logp"], x["old"], x["adv"], x["mask"], loss_type="ppo")
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(x["logp"], x["old"], x["adv"][:-1], x["mask"])
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(x["logp"], x["old"], x["adv"], x["mask"], loss_type="dr_grpo", max_tokens=2)
