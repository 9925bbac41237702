"""The tiny-shapes recipe's pieces: seekable scenes, exact resume, gate, word-level tokenizer, LM losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unirl_kit.backbones.tiny_shapes import build
from unirl_kit.checkpoint import latest_checkpoint
from unirl_kit.pretrain.gate import tokenizer_gate
from unirl_kit.pretrain.scenes import scene_batch, to_pixels, to_uint8
from unirl_kit.pretrain.tokenizer import TokenizerConfig, build_vq, train_tokenizer

TINY = dict(image_size=32, channel_multiplier=[1, 2], latent_channels=32, codebook_size=32, batch_size=2,
            warmup_steps=1, checkpoint_every=2, log_every=1, restart_every=2, bf16=False)


def test_scene_batches_are_seekable_and_deterministic():
    a, specs_a = scene_batch(0, 7, 6, 32)
    b, specs_b = scene_batch(0, 7, 6, 32)
    c, _ = scene_batch(0, 8, 6, 32)
    assert torch.equal(a, b) and specs_a == specs_b and not torch.equal(a, c)
    assert a.shape == (6, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert [s.tag for s in specs_a] == ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    assert all(s.question and s.answer for s in specs_a)
    assert (to_uint8(to_pixels(list(to_uint8(a)))) == to_uint8(a)).all()


def test_tokenizer_resume_is_exact(tmp_path):
    """4 steps straight == 2 steps, a kill, then a resumed run to 4: same log and same weights."""
    straight = train_tokenizer(TokenizerConfig(**{**TINY, "steps": 4}), tmp_path / "a")
    train_tokenizer(TokenizerConfig(**{**TINY, "steps": 2}), tmp_path / "b")
    resumed = train_tokenizer(TokenizerConfig(**{**TINY, "steps": 4}), tmp_path / "b")
    for (k, v), (k2, v2) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    log_a = [json.loads(x) for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert drop(log_a) == drop(log_b) and [r["step"] for r in log_a] == [1, 2, 3, 4]
    ckpt = latest_checkpoint(tmp_path / "b/checkpoints")
    assert ckpt.name == "step-0000004" and not list((tmp_path / "b/checkpoints").glob(".tmp-*"))
    codebook = load_file(ckpt / "model.safetensors")["quantize.embedding.weight"]
    assert torch.allclose(codebook.norm(dim=1), torch.ones(len(codebook)), atol=1e-5)


def test_trained_codes_match_the_classes_own_encode_and_decode(tmp_path):
    """Unit-norm codes make JanusVQVAE.encode's Euclidean argmin equal training's cosine argmax."""
    from unirl_kit.pretrain.tokenizer import quantize

    vq = train_tokenizer(TokenizerConfig(**{**TINY, "steps": 2}), tmp_path)
    pixels, _ = scene_batch(3, 0, 2, 32)
    with torch.no_grad():
        codes, _, _, idx = quantize(vq, pixels)
        own = vq.encode(pixels).image_tokens.view(2, -1)
        assert torch.equal(own.flatten(), idx)
        ours = vq.decoder(vq.post_quant_conv(codes))
        assert torch.allclose(vq.decode(own), ours, atol=1e-5)


def test_gate_reports_every_tag_and_fails_an_untrained_tokenizer():
    torch.manual_seed(0)
    vq = build_vq(TokenizerConfig(**TINY)).eval()
    gate = tokenizer_gate(vq, 32, per_tag=2, batch_size=2)
    assert set(gate["per_tag"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert gate["passed"] is False and gate["threshold"] == 0.95


def test_word_level_tokenizer_covers_every_prompt_question_and_answer():
    from unirl_kit.prompts.generate import generate_prompts

    tok = build.build_tokenizer()
    unk = tok.convert_tokens_to_ids(build.UNK)
    for spec in generate_prompts("shapes", 400, 0):
        for text in (spec.prompt, spec.question, spec.answer, build.CAPTION_QUESTION):
            ids = tok(text).input_ids
            assert unk not in ids, text
            assert ids[0] == tok.bos_token_id
    assert tok.decode(tok("The circle is left of the square.").input_ids[1:]) == "the circle is left of the square ."


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from unirl_kit.pretrain.language_model import LanguageModelConfig, build_model

    vq_dir: Path = tmp_path_factory.mktemp("vq")
    build_vq(TokenizerConfig(channel_multiplier=[1, 1, 2], latent_channels=32, codebook_size=32)).save_pretrained(vq_dir)
    torch.manual_seed(0)
    cfg = LanguageModelConfig(text_hidden=64, text_layers=1, vision_hidden=32, vision_layers=1)
    return build_model(cfg, vq_dir), build.build_tokenizer()


def test_generation_loss_matches_the_models_own_teacher_forcing(tiny_lm):
    """The left-padded batch gives the same per-prompt loss as each prompt alone."""
    from unirl_kit.pretrain.language_model import generation_loss

    model, tok = tiny_lm
    tokens = torch.randint(0, 32, (2, build.NUM_IMAGE_TOKENS))
    prompts = ["a photo of a circle", "a photo of a red square and a blue circle"]
    with torch.no_grad():
        both = generation_loss(model.eval(), tok, prompts, tokens, torch.tensor([False, False]))
        each = [generation_loss(model, tok, [p], tokens[i:i + 1], torch.tensor([False])) for i, p in enumerate(prompts)]
    assert torch.allclose(both, torch.stack(each).mean(), atol=1e-5)
    with torch.no_grad():
        per_image = generation_loss(model, tok, prompts, tokens, torch.tensor([False, False]), per_image=True)
    assert per_image.shape == (2,)
    assert torch.allclose(per_image, torch.stack(each) * build.NUM_IMAGE_TOKENS, rtol=1e-5)


def test_prompt_reading_loss_targets_the_prompts_content_words(tiny_lm):
    """The KL is 0 exactly when every image position's text head names the content words uniformly,
    skips dropped prompts, and reaches the prompt only through the image positions' hidden states."""
    from unirl_kit.pretrain.language_model import generation_forward, prompt_reading_loss

    model, tok = tiny_lm
    vocab = tok.get_vocab()
    prompts = ["a photo of a red circle", "a photo of two squares"]
    hidden = torch.zeros(2, 3, model.lm_head.in_features)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        for word in ("red", "circle"):  # feature 0 -> the first prompt's words, feature 1 -> the second's
            head.weight[vocab[word], 0] = 30.0
        for word in ("two", "squares"):
            head.weight[vocab[word], 1] = 30.0
    hidden[0, :, 0], hidden[1, :, 1] = 1.0, 1.0
    original, model.lm_head = model.lm_head, head
    try:
        torch.set_grad_enabled(False)
        both = prompt_reading_loss(model, tok, prompts, hidden, torch.tensor([False, False]))
        swapped = prompt_reading_loss(model, tok, prompts[::-1], hidden, torch.tensor([False, False]))
        dropped = prompt_reading_loss(model, tok, prompts, hidden, torch.tensor([True, True]))
        one = prompt_reading_loss(model, tok, prompts, hidden, torch.tensor([False, True]))
    finally:
        torch.set_grad_enabled(True)
        model.lm_head = original
    assert float(both) == pytest.approx(0.0, abs=1e-6)
    assert float(swapped) > 10.0
    assert float(dropped) == 0.0 and float(one) == pytest.approx(0.0, abs=1e-6)
    tokens = torch.randint(0, 32, (2, build.NUM_IMAGE_TOKENS))
    _, image_hidden = generation_forward(model, tok, prompts, tokens, torch.tensor([False, False]))
    assert image_hidden.shape[:2] == (2, build.NUM_IMAGE_TOKENS)
    loss = prompt_reading_loss(model, tok, prompts, image_hidden, torch.tensor([False, False]))
    loss.backward()
    assert model.get_input_embeddings().weight.grad[vocab["circle"]].abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_understanding_loss_only_scores_the_answer(tiny_lm):
    from unirl_kit.pretrain.language_model import understanding_loss

    model, tok = tiny_lm
    pixels, specs = scene_batch(0, 0, 2, build.IMAGE_SIZE)
    with torch.no_grad():
        loss = understanding_loss(model.eval(), tok, pixels, [s.question for s in specs], [s.answer for s in specs])
        other = understanding_loss(model, tok, pixels, ["what is the main item in this image ?"] * 2,
                                   [s.answer for s in specs])
    assert torch.isfinite(loss) and not torch.allclose(loss, other)
