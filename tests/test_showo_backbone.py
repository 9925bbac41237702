"""The `showo` backbone on a random tiny Show-o in the published layout: the protocol, then the same
commands a user runs (`unirl generate`, `unirl score`, `unirl eval geneval`, `unirl train grpo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unirl_kit.types import InputError

PROMPTS = ["a photo of a circle", "a photo of two squares"]


@pytest.fixture(scope="module")
def showo_dir(tmp_path_factory) -> Path:
    from unirl_kit.testing.tiny_showo import save_random_showo

    return save_random_showo(tmp_path_factory.mktemp("showo") / "model", seed=0)


@pytest.fixture(scope="module")
def showo(showo_dir):
    from unirl_kit.registry import registry

    return registry("backbones").build("showo", model=str(showo_dir), device="cpu", timesteps=4)


def test_generation_records_a_trajectory_whose_teacher_forced_logprobs_match(showo):
    batch = showo.generate(PROMPTS, group_size=2, seeds=3, cfg_scale=3.0)
    assert batch.tokens.shape == (4, 16) and batch.trajectory.shape == (4, 16)
    assert batch.images[0].size == (showo.image_size, showo.image_size) == (64, 64)
    assert int(batch.trajectory.min()) == 0 and int(batch.trajectory.max()) == 3
    logp = showo.image_logprobs(PROMPTS, batch.tokens, 3.0, 1.0, trajectory=batch.trajectory)
    torch.testing.assert_close(logp.detach(), batch.logprobs, atol=1e-5, rtol=0)
    logp.sum().backward()  # differentiable: the policy-gradient quantity
    assert showo.model.showo.lm_head.weight.grad is not None
    showo.model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="trajectory"):
        showo.image_logprobs(PROMPTS, batch.tokens, 3.0, 1.0)
    one, masked = showo.one_pass_logprobs(PROMPTS, batch.tokens, 3.0)
    assert bool(masked.any(-1).all()) and bool((one[~masked] == 0).all())


def test_an_image_depends_on_its_seed_only(showo):
    batch = showo.generate(PROMPTS, group_size=2, seeds=3, cfg_scale=3.0)
    alone = showo.generate(PROMPTS[1:], group_size=1, seeds=[[batch.seeds[3]]], cfg_scale=3.0)
    assert torch.equal(alone.tokens[0], batch.tokens[3]) and torch.equal(alone.trajectory[0], batch.trajectory[3])
    with pytest.raises(InputError, match="top_k"):
        showo.generate(PROMPTS, top_k=5)


def test_answers_and_their_logprobs(showo):
    images = showo.generate(PROMPTS, seeds=1).images
    questions = ["What is the main item in this image?", "How many items in this image?"]
    answers = showo.answer(images, questions, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    scores = showo.answer_logprobs(images, questions, ["circle", "two squares"])
    assert scores.mask.sum(-1).tolist() == [2, 3]  # answer words + EOS
    assert torch.isfinite(scores.loss) and scores.loss.requires_grad
    tokens = showo.encode_images(images)
    assert tokens.shape == (2, 16) and int(tokens.max()) < showo.codebook_size


def test_save_writes_one_folder_that_loads_back(showo, tmp_path):
    from unirl_kit.registry import registry

    showo.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "magvitv2" / "config.json").is_file()
    again = registry("backbones").build("showo", model=str(tmp_path / "copy"), device="cpu", timesteps=4)
    assert torch.equal(again.generate(PROMPTS[:1], seeds=2).tokens, showo.generate(PROMPTS[:1], seeds=2).tokens)


def test_loading_errors_name_what_is_missing(showo_dir, tmp_path):
    from unirl_kit.registry import registry

    build = registry("backbones").build
    with pytest.raises(InputError, match="needs --model"):
        build("showo", device="cpu")
    with pytest.raises(InputError, match="vq_model .*no such folder"):
        build("showo", model=str(showo_dir), vq_model=str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(InputError, match="no tokenizer files"):
        build("showo", model=str(showo_dir), tokenizer=str(tmp_path), device="cpu")
    config = json.loads((showo_dir / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in showo_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            (bad / f.name).symlink_to(f)
    (bad / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(InputError, match="config.json: vocab_size .* not a Show-o config"):
        build("showo", model=str(bad), vq_model=str(showo_dir / "magvitv2"), device="cpu")
    from unirl_kit.backbones.tiny_shapes.build import build_tokenizer

    other = build_tokenizer()
    other.add_tokens(["zebra"])  # one more text token: Show-o's specials would land one id later
    other.save_pretrained(tmp_path / "tok")
    with pytest.raises(InputError, match="special tokens got ids"):
        build("showo", model=str(showo_dir), tokenizer=str(tmp_path / "tok"), device="cpu")


def _cli(*args: str) -> str:
    from unirl_kit.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_generate_score_and_geneval_through_the_cli(showo_dir, tmp_path):
    from unirl_kit.generation.outputs import read_prompt_samples
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    prompts = tmp_path / "prompts.jsonl"
    run_prompts(PromptsConfig(world="shapes", n=3, seed=0, out=str(prompts)))
    out = tmp_path / "images"
    _cli("generate", "--backbone", "showo", "--model", str(showo_dir), "--prompts", str(prompts), "--group-size", "2",
         "--out", str(out), "backbone.device=cpu", "sampling.cfg_scale=3", "backbone.options.timesteps=4",
         "progress=false")
    saved = read_prompt_samples(out, 0)
    assert saved["tokens"].shape == saved["trajectory"].shape == (2, 16)
    _cli("score", str(out), "--reward", "self-qa", "--backbone", "showo", "--model", str(showo_dir),
         "backbone.device=cpu", "backbone.options.timesteps=4", "progress=false")
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len([x for x in lines if "reward" in x]) == 6
    _cli("eval", "geneval", str(out), "--out", str(tmp_path / "geneval"), "--detector", "shapes", "progress=false")
    summary = json.loads((tmp_path / "geneval" / "summary.json").read_text())
    assert 0.0 <= summary["overall"] <= 1.0 and summary["total_images"] == 6


def test_grpo_trains_show_o_with_lora_and_exports_a_loadable_folder(showo_dir, tmp_path):
    from unirl_kit.config import load_config
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
    from unirl_kit.registry import registry
    from unirl_kit.testing.rewards import BRIGHTNESS, register_test_rewards
    from unirl_kit.training.config import GRPOConfig
    from unirl_kit.training.grpo import run_grpo

    register_test_rewards()  # spread on a random model's noise images, which GenEval-shapes scores 0
    prompts = tmp_path / "prompts.jsonl"
    run_prompts(PromptsConfig(world="shapes", n=4, seed=0, out=str(prompts)))
    out = tmp_path / "grpo"
    items = {"prompts": str(prompts), "prompts_per_step": 2, "group_size": 3, "rewards": f'["{BRIGHTNESS}"]',
             "backbone.name": "showo", "backbone.model": str(showo_dir), "backbone.device": "cpu",
             "backbone.options": '{"timesteps": 4}', "beta": "0.1", "lora.enabled": "true", "lora.r": "4",
             "lora.target_modules": '["q_proj", "k_proj", "v_proj", "dense"]', "optim.lr": "1e-3",
             "run.out": str(out), "run.steps": "2", "run.progress": "false", "run.report_to": "[jsonl]",
             "sampling.cfg_scale": "3.0"}
    run_grpo(load_config(GRPOConfig, None, {}, [f"{k}={v}" for k, v in items.items()]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["kl/gen"] == pytest.approx(0.0, abs=1e-6)
    assert all(torch.isfinite(torch.tensor([r["loss/gen"], r["grad_norm"]])).all() for r in rows)
    assert any(r["grad_norm"] > 0 for r in rows)  # a step whose groups all tie has no gradient, by design
    merged = registry("backbones").build("showo", model=str(out / "final"), device="cpu", timesteps=4)
    assert merged.generate(PROMPTS[:1], seeds=0).tokens.shape == (1, 16)


def test_the_show_o_loop_config_runs_with_a_tiny_random_show_o(showo_dir, tmp_path):
    """configs/loop/showo_512.yaml (SFT und, then GRPO, group 3) with overrides that swap in the tiny model."""
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(LoopConfig, root / "configs" / "loop" / "showo_512.yaml", {}, [
        f"backbone.model={showo_dir}", "backbone.device=cpu", "backbone.options={timesteps: 3}", f"out={tmp_path}",
        "rounds=1", "world=shapes", "detector=shapes", "n_train=4", "n_eval=2", "eval_group_size=2", "progress=false",
        f"grpo_config={root / 'configs/grpo/showo_512.yaml'}", f"sft_config={root / 'configs/sft/showo_512.yaml'}"])
    tiny = ["run.steps=1", "prompts_per_step=2", "run.report_to=[jsonl]", "backbone.gradient_checkpointing=false"]
    cfg.grpo_overrides, cfg.sft_overrides = tiny, tiny
    report = run_loop(cfg)
    assert report["delta"] is not None
    assert (tmp_path / "round-001" / "train" / "final" / "magvitv2").is_dir()


def test_end_to_end_sft_is_refused_before_any_work(showo_dir):
    from unirl_kit.config import load_config
    from unirl_kit.training.config import SFTConfig, check_sft

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(SFTConfig, root / "configs" / "sft" / "showo_512.yaml", {}, ["prompts=x.jsonl", "mode=e2e"])
    with pytest.raises(InputError, match="e2e needs a differentiable image path.*'showo'"):
        check_sft(cfg)
