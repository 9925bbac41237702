"""`unirl train sft` on a random tiny Janus (16 px, 16 image tokens): every mode runs and writes its
outputs, resume is exact, the e2e gradient reaches the generation head (und's does not), gen-rs with
nothing kept leaves the weights alone, and bad settings fail before a model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from unirl_kit.config import load_config
from unirl_kit.training.config import BackboneConfig, LoraConfig, SFTConfig
from unirl_kit.training.sft import run_sft
from unirl_kit.types import InputError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest Janus the backbone loads: 16 px images, 4x4 tokens, codebook 64, 2 text layers."""
    from unirl_kit.testing.tiny_janus import save_random_janus

    return save_random_janus(tmp_path_factory.mktemp("sft_janus") / "model", image_size=16, text_hidden=64,
                             text_layers=2, codebook_size=64, seed=0)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    out = tmp_path_factory.mktemp("sft_prompts") / "prompts.jsonl"
    run_prompts(PromptsConfig(n=6, seed=0, out=str(out)))
    return out


def _cfg(model_dir: Path, prompts: Path, out: Path, *overrides: str) -> SFTConfig:
    """2 prompts x 2 images per step, micro-batches of 3 rows (so a step takes two), CPU, quiet."""
    base = [f"prompts={prompts}", "backbone.name=janus", f"backbone.model={model_dir}", "backbone.device=cpu",
            "prompts_per_step=2", "group_size=2", "optim.lr=1e-3", "optim.micro_batch=3", "run.steps=2",
            "run.checkpoint_every=2", "run.progress=false", "run.report_to=[jsonl]", f"run.out={out}"]
    return load_config(SFTConfig, None, {}, [*base, *overrides])


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("mode", ["und", "e2e", "gen-rs"])
def test_each_mode_trains_two_steps(model_dir, prompts_file, tmp_path, mode):
    extra = ["threshold=0.0", "rewards=[self-qa]", "reward_options={self-qa: {max_new_tokens: 4}}"] \
        if mode == "gen-rs" else []
    out = tmp_path / mode
    summary = run_sft(_cfg(model_dir, prompts_file, out, f"mode={mode}", *extra))
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and summary["mode"] == mode
    for r in rows:
        assert r["kept"] == 4 and r["kept_share"] == 1.0
        assert torch.isfinite(torch.tensor(r["loss/sft"])) and r["loss/sft"] > 0 and r["grad_norm"] > 0
        assert {"lr", "time/generate", "time/score", "time/update"} <= set(r)
    assert ("reward/self-qa/mean" in rows[0]) == (mode == "gen-rs")
    assert (out / "checkpoints" / "step-0000002" / "model.safetensors").is_file()
    before, after = load_file(model_dir / "model.safetensors"), _final(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    head = "model.generation_head.vision_head.weight"
    assert torch.equal(before[head], after[head]) == (mode == "und")  # und never touches generation


def test_und_resume_is_exact(model_dir, prompts_file, tmp_path):
    """4 steps straight == 2 steps, then --resume to 4: same losses, bit-identical final weights."""
    straight = tmp_path / "straight"
    run_sft(_cfg(model_dir, prompts_file, straight, "run.steps=4"))
    split = tmp_path / "split"
    run_sft(_cfg(model_dir, prompts_file, split, "run.steps=2"))
    with pytest.raises(InputError, match="--resume"):  # a fresh run refuses a folder with checkpoints
        run_sft(_cfg(model_dir, prompts_file, split, "run.steps=4"))
    run_sft(_cfg(model_dir, prompts_file, split, "run.steps=4"), resume=True)
    a, b = _rows(straight), _rows(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss/sft"] for r in a] == [r["loss/sft"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    wa, wb = _final(straight), _final(split)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(InputError, match="mode"):  # another mode's checkpoints are not continued
        run_sft(_cfg(model_dir, prompts_file, split, "run.steps=5", "mode=e2e"), resume=True)


def _policy_and_batch(model_dir, prompts_file, tmp_path, mode):
    from unirl_kit.prompts.schema import read_prompts
    from unirl_kit.training.common import build_policy
    from unirl_kit.training.rollout import generate_groups, sample_prompts
    from unirl_kit.training.sft import select_targets

    cfg = _cfg(model_dir, prompts_file, tmp_path / "unused", f"mode={mode}")
    policy = build_policy(BackboneConfig(name="janus", model=str(model_dir), device="cpu"), LoraConfig(), False)
    specs, offset = sample_prompts(read_prompts(prompts_file), 0, cfg, 0, 1)
    batch = generate_groups(policy, specs, offset, 0, cfg)
    return policy, select_targets(policy, None, specs, offset, batch, cfg), cfg


@pytest.mark.parametrize("mode", ["e2e", "und"])
def test_e2e_gradient_reaches_the_generation_head(model_dir, prompts_file, tmp_path, mode):
    from unirl_kit.training.sft import micro_terms

    policy, data, cfg = _policy_and_batch(model_dir, prompts_file, tmp_path, mode)
    terms = micro_terms(policy, data, data.keep, 0, cfg)
    terms["und"].backward()
    head = policy.model.model.generation_head.vision_head.weight
    vision = policy.model.model.vision_model.embeddings.patch_embedding.weight
    assert vision.grad is not None and vision.grad.abs().sum() > 0  # both train understanding
    if mode == "e2e":
        assert head.grad is not None and head.grad.abs().sum() > 0
    else:
        assert head.grad is None or head.grad.abs().sum() == 0


def test_straight_through_forward_is_the_sampled_image(model_dir, prompts_file, tmp_path):
    """One-hot forward, exact VQ decode, and answer log-probs on pixels equal those on the PIL images."""
    import numpy as np

    from unirl_kit.training.sft_math import gumbel_noise, relaxed_tokens

    policy, data, _ = _policy_and_batch(model_dir, prompts_file, tmp_path, "e2e")
    b, tokens = policy.backbone, data.batch.tokens
    logits = torch.randn(*tokens.shape, b.codebook_size, requires_grad=True)
    y = relaxed_tokens(logits, tokens, gumbel_noise(tuple(logits.shape), 3), tau=0.5)
    assert torch.equal(y.detach(), F.one_hot(tokens, b.codebook_size).float())
    assert torch.equal(gumbel_noise((2, 3), 7), gumbel_noise((2, 3), 7))
    with torch.no_grad():
        pixels = b.decode_soft(y)
        torch.testing.assert_close(pixels, b.model.decode_image_tokens(tokens).permute(0, 3, 1, 2), atol=0, rtol=0)
        arr = np.stack([np.asarray(im) for im in data.batch.images])
        as_pixels = torch.tensor(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
        ref = b.answer_logprobs(data.batch.images, data.questions, data.answers)
        got = b.answer_logprobs_from_pixels(as_pixels, data.questions, data.answers)
        bigger = b.answer_logprobs_from_pixels(F.interpolate(as_pixels, scale_factor=2), data.questions,
                                               data.answers)  # resized to the vision tower's size
    assert torch.equal(got.mask, ref.mask)
    torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    assert bigger.logprobs.shape == ref.logprobs.shape and torch.isfinite(bigger.logprobs).all()


def test_gen_rs_with_nothing_kept_makes_no_update(model_dir, prompts_file, tmp_path):
    out = tmp_path / "none"
    options = ["mode=gen-rs", "threshold=100.0", "reward_options={self-qa: {max_new_tokens: 4}}"]
    run_sft(_cfg(model_dir, prompts_file, out, *options))
    rows = _rows(out)
    assert [(r["step"], r["kept"], r["kept_share"]) for r in rows] == [(1, 0, 0.0), (2, 0, 0.0)]
    assert all("loss/sft" not in r and "grad_norm" not in r for r in rows)
    before, after = load_file(model_dir / "model.safetensors"), _final(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    run_sft(_cfg(model_dir, prompts_file, out, *options, "run.steps=3"), resume=True)  # still resumable
    assert [r["step"] for r in _rows(out)] == [1, 2, 3]


@pytest.mark.parametrize(("override", "message"), [
    ("mode=bogus", "mode"),
    ("group_size=0", "group_size"),
    ("prompts_per_step=0", "prompts_per_step"),
    ("threshold=0.5", "threshold"),  # mode und
    ("mode=gen-rs", "threshold"),  # gen-rs without one
    ("gumbel_tau=0", "gumbel_tau"),
    ("gen_weight=1.0", "gen_weight"),  # mode und
    ("optim.lr=0", "optim.lr"),
    ("focus=1", "focus"),  # mode und
    ("focus=-1", "focus"),
])
def test_invalid_settings_fail_before_loading_a_model(prompts_file, tmp_path, override, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):  # a word outside a vocabulary fails as the config loads
        run_sft(_cfg(tmp_path / "no-model", prompts_file, out, override))  # a model that does not exist
    assert not out.exists()


def test_unknown_reward_fails_before_loading_a_model(prompts_file, tmp_path):
    cfg = _cfg(tmp_path / "no-model", prompts_file, tmp_path / "out", "mode=gen-rs", "threshold=1", "rewards=[self-qaa]")
    with pytest.raises(Exception, match="self-qa"):
        run_sft(cfg)
    assert not (tmp_path / "out").exists()


def test_cli(unirl_cli, model_dir, prompts_file, tmp_path):
    bad = unirl_cli("train", "sft", f"prompts={prompts_file}", "mode=e3e", check=False)
    assert bad.returncode == 2 and "mode" in bad.stderr and "Traceback" not in bad.stderr
    ok = unirl_cli("train", "sft", "--config", Path(__file__).parents[1] / "configs/sft/tiny_shapes.yaml",
                   f"prompts={prompts_file}", "backbone.name=janus", f"backbone.model={model_dir}",
                   "backbone.device=cpu", "prompts_per_step=1", "group_size=2", "run.steps=1",
                   f"run.out={tmp_path / 'cli'}", "run.progress=false")
    assert json.loads(ok.stdout.strip().splitlines()[-1])["steps"] == 1
    assert (tmp_path / "cli" / "final" / "config.json").is_file()


def test_focus_weights_each_token_by_its_doubt():
    """(1 - p)^focus times log p, summed per row; a token the model is sure of adds (almost) nothing."""
    import math

    from unirl_kit.training.sft_math import focused

    logp = torch.log(torch.tensor([[0.5, 0.999], [0.1, 0.9]], dtype=torch.float64)).requires_grad_()
    assert torch.equal(focused(logp, 0.0), logp.sum(-1))
    out = focused(logp, 2.0)
    want = [0.25 * math.log(0.5) + 1e-6 * math.log(0.999), 0.81 * math.log(0.1) + 0.01 * math.log(0.9)]
    assert out.tolist() == pytest.approx(want)
    out.sum().backward()  # the weight is a constant: the gradient is the weight itself
    assert logp.grad.flatten().tolist() == pytest.approx([0.25, 1e-6, 0.81, 0.01])
