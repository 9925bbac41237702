"""The `janus` backbone on a random tiny Janus: exactness against transformers, the log-prob contract,
seed independence, understanding, the image tokenizer, save/load and bad-input errors."""

from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unirl_kit.backbones.base import AnswerScores, Backbone, image_seed, resolve_seeds, uniform_stream
from unirl_kit.backbones.janus import JanusBackbone
from unirl_kit.backbones.janus_decode import attend, supports_lean_decode
from unirl_kit.backbones.janus_sampler import pick_tokens, sample_image_tokens
from unirl_kit.registry import UnknownPluginError, registry
from unirl_kit.types import InputError

pytest_plugins = ["_janus_fixtures"]  # the shared random tiny Janus (session fixtures)

PROMPTS = ["a photo of a red circle", "a photo of a green triangle and a blue circle", "two squares"]
QUESTIONS = ["what is the main item in this image?", "how many items in this image?",
             "what is the color of the object?"]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _hf_config(b: JanusBackbone, **kw):
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=b.special.bos, pad_token_id=b.special.pad, eos_token_id=b.eos, **kw)


def test_is_a_backbone(tiny_janus):
    assert isinstance(tiny_janus, Backbone)
    assert (tiny_janus.device.type, tiny_janus.dtype) == ("cpu", torch.float32)
    assert (tiny_janus.num_image_tokens, tiny_janus.image_size, tiny_janus.codebook_size) == (256, 64, 512)


def test_greedy_tokens_equal_transformers_generate(tiny_janus):
    """Prompts of different lengths (left padding) and CFG 3: exactly generate()'s tokens."""
    b = tiny_janus
    out = b.generate(PROMPTS, group_size=1, temperature=0.0, cfg_scale=3.0)
    enc = b.processor(text=PROMPTS, generation_mode="image", padding=True, return_tensors="pt")
    gc = _hf_config(b, do_sample=False, guidance_scale=3.0, generation_kwargs={"boi_token_id": b.special.boi})
    ref = b.model.generate(**enc, generation_mode="image", generation_config=gc)
    assert torch.equal(out.tokens, ref)
    assert len(set(map(tuple, out.tokens.tolist()))) == 3  # the prompts lead to different images
    with torch.no_grad():  # greedy log-probs are recorded at temperature 1 (base.py)
        tf = b.image_logprobs(PROMPTS, out.tokens, cfg_scale=3.0, temperature=0.0)
    torch.testing.assert_close(tf, out.logprobs, atol=1e-4, rtol=0)


def test_sampled_logprobs_equal_teacher_forced_and_images_ignore_batch(tiny_janus):
    b = tiny_janus
    prompts = PROMPTS[:2]
    full = b.generate(prompts, group_size=2, seeds=7, cfg_scale=3.0, temperature=1.0, top_k=100)
    assert full.tokens.shape == full.logprobs.shape == (4, 256) and len(full.images) == 4
    assert full.seeds == [image_seed(7, p, k) for p in range(2) for k in range(2)]
    assert not torch.equal(full.tokens[0], full.tokens[1])  # distinct seeds, distinct images
    with torch.no_grad():
        tf = b.image_logprobs(prompts, full.tokens, cfg_scale=3.0, temperature=1.0)  # one prompt per group
    torch.testing.assert_close(tf, full.logprobs, atol=1e-4, rtol=0)
    # prompt 1 alone (another batch size, batch composition and padding: what another rank would run)
    alone = b.generate([prompts[1]], group_size=2, seeds=[[image_seed(7, 1, 0), image_seed(7, 1, 1)]],
                       cfg_scale=3.0, temperature=1.0, top_k=100)
    assert torch.equal(alone.tokens, full.tokens[2:])
    torch.testing.assert_close(alone.logprobs, full.logprobs[2:], atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(alone.images[1]), np.asarray(full.images[3]))


def test_logprobs_without_guidance_are_differentiable(tiny_janus):
    b = tiny_janus
    out = b.generate(["a photo of a red circle"], seeds=3, cfg_scale=1.0, temperature=0.7, top_p=0.9)
    lp = b.image_logprobs(["a photo of a red circle"], out.tokens, cfg_scale=1.0, temperature=0.7)
    torch.testing.assert_close(lp.detach(), out.logprobs, atol=1e-4, rtol=0)
    try:
        lp.sum().backward()
        grad = b.model.model.generation_head.vision_head.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    finally:
        b.model.zero_grad(set_to_none=True)


def _with_kv_heads(model, kv_heads: int):
    """A random Janus like `model` whose text model has `kv_heads` key/value heads (GQA when fewer)."""
    from transformers import JanusForConditionalGeneration

    config = copy.deepcopy(model.config)
    config.text_config.num_key_value_heads = kv_heads
    torch.manual_seed(1)
    return JanusForConditionalGeneration(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_lean_decode_step_equals_the_full_forward(tiny_janus, kv_heads):
    """The default lean per-token step gives the full forward's tokens and log-probs: left-padded prompts of
    different lengths, with CFG (and without: no padding), with and without GQA."""
    b = tiny_janus
    model = b.model if kv_heads == 4 else _with_kv_heads(b.model, kv_heads)
    assert supports_lean_decode(model)
    assert not supports_lean_decode(SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(
        model_type="qwen2"))))
    cases = [(b.prompt_ids(PROMPTS), 3.0), (b.prompt_ids(PROMPTS[:1]) * 2, 1.0)]
    for rows, cfg in cases:
        u = uniform_stream(resolve_seeds(5, len(rows), 1), 40)
        lean = sample_image_tokens(model, rows, b.special, 40, cfg, 1.0, u, top_k=100)
        full = sample_image_tokens(model, rows, b.special, 40, cfg, 1.0, u, top_k=100, lean=False)
        assert torch.equal(lean[0], full[0])
        torch.testing.assert_close(lean[1], full[1], atol=1e-5, rtol=0)
        greedy = sample_image_tokens(model, rows, b.special, 40, cfg, 0.0, None)
        assert torch.equal(greedy[0], sample_image_tokens(model, rows, b.special, 40, cfg, 0.0, None, lean=False)[0])


@pytest.mark.parametrize("groups", [1, 2])
def test_decode_attention_equals_sdpa(groups):
    """The lean step's attention (one query over a prefix of the cache buffers, additive padding mask)
    equals SDPA's, with and without a mask and with GQA."""
    gen = torch.Generator().manual_seed(0)
    r, kv, d, t, capacity = 6, 2, 16, 37, 50
    q = torch.randn(r, kv, groups, d, generator=gen)
    k, v = (torch.randn(r, kv, capacity, d, generator=gen) for _ in range(2))
    keep = torch.ones(r, capacity, dtype=torch.bool)
    keep[:3, :5] = False  # left padding of three rows
    bias = torch.zeros(r, 1, capacity).masked_fill(~keep[:, None], -torch.inf)
    for mask, add in ((None, None), (keep[:, None, None, :t], bias[..., :t])):
        ref = F.scaled_dot_product_attention(q, k[:, :, :t], v[:, :, :t], attn_mask=mask, scale=0.3)
        torch.testing.assert_close(attend(q, k[:, :, :t], v[:, :, :t], add, 0.3), ref, atol=1e-5, rtol=0)


def test_pick_tokens_respects_top_k_top_p_and_the_distribution():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=gen) * 2
    u = torch.rand(64, generator=gen, dtype=torch.float64)
    top5 = torch.topk(scores, 5).indices
    picked = pick_tokens(scores, u, top_k=5, top_p=None)
    assert all(picked[i] in top5[i] for i in range(64))
    probs = scores.softmax(-1)
    picked = pick_tokens(scores, u, top_k=None, top_p=0.5)
    for i in range(64):  # the mass strictly above the picked token's probability stays below top_p
        assert probs[i][probs[i] > probs[i, picked[i]]].sum() < 0.5
    dist = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    draws = pick_tokens(dist.expand(20000, 4), torch.rand(20000, generator=gen, dtype=torch.float64), None, None)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, dist.softmax(-1)[0], atol=0.015, rtol=0)
    assert torch.equal(pick_tokens(scores, None, None, None), scores.argmax(-1))


def test_image_seed_depends_on_its_triple_only():
    assert image_seed(0, 1, 2) == image_seed(0, 1, 2)
    seeds = {image_seed(s, p, k) for s in range(3) for p in range(20) for k in range(8)}
    assert len(seeds) == 3 * 20 * 8 and all(0 <= s < 2**63 for s in seeds)
    assert resolve_seeds(5, 2, 3)[4] == image_seed(5, 1, 1)
    with pytest.raises(ValueError, match="expected 2 rows of 3"):
        resolve_seeds([[1, 2, 3]], 2, 3)


def test_greedy_answers_equal_transformers_generate(tiny_janus):
    b = tiny_janus
    images = _images(3)
    answers = b.answer(images, QUESTIONS, max_new_tokens=8)
    enc = b.processor(text=[b.processor.image_token + q for q in QUESTIONS], images=images, padding=True,
                      return_tensors="pt")
    ref = b.model.generate(**enc, generation_config=_hf_config(b, do_sample=False, max_new_tokens=8))
    expected = [s.strip() for s in b.processor.tokenizer.batch_decode(ref[:, enc.input_ids.shape[1]:],
                                                                      skip_special_tokens=True)]
    assert answers == expected
    sampled = b.answer(images, QUESTIONS, max_new_tokens=8, greedy=False, seed=1)
    assert sampled == b.answer(images, QUESTIONS, max_new_tokens=8, greedy=False, seed=1)
    assert sampled != answers or sampled != b.answer(images, QUESTIONS, max_new_tokens=8, greedy=False, seed=2)


def test_answer_logprobs_match_a_manual_forward(tiny_janus):
    """Batched (padded) scores equal a hand-built unpadded sequence: prompt, answer, EOS."""
    b = tiny_janus
    images, answers = _images(2, seed=1), ["a red circle", "two"]
    scores = b.answer_logprobs(images, QUESTIONS[:2], answers)
    assert isinstance(scores, AnswerScores) and scores.mask.sum(1).tolist() == [4, 2]
    tok, nll, count = b.processor.tokenizer, 0.0, 0
    for i in range(2):
        enc = b.processor(text=[b.processor.image_token + QUESTIONS[i]], images=[images[i]], return_tensors="pt")
        target = tok(answers[i], add_special_tokens=False).input_ids + [b.eos]
        ids = torch.cat([enc.input_ids, torch.tensor([target])], dim=1)
        with torch.no_grad():
            logits = b.model(input_ids=ids, pixel_values=enc.pixel_values).logits[0]
        start = enc.input_ids.shape[1]
        manual = logits[start - 1: start - 1 + len(target)].log_softmax(-1)[torch.arange(len(target)), target]
        torch.testing.assert_close(scores.logprobs[i, : len(target)].detach(), manual, atol=1e-4, rtol=0)
        nll += F.cross_entropy(logits[start - 1: start - 1 + len(target)], torch.tensor(target), reduction="sum")
        count += len(target)
    torch.testing.assert_close(scores.loss.detach(), nll / count, atol=1e-4, rtol=0)
    try:
        scores.loss.backward()
        assert b.model.lm_head.weight.grad is not None
    finally:
        b.model.zero_grad(set_to_none=True)


def test_encode_decode(tiny_janus):
    tokens = torch.randint(0, 512, (2, 256), generator=torch.Generator().manual_seed(0))
    images = tiny_janus.decode_tokens(tokens)
    assert [im.size for im in images] == [(64, 64)] * 2 and images[0].mode == "RGB"
    codes = tiny_janus.encode_images(images)
    assert codes.shape == (2, 256) and codes.dtype == torch.long and int(codes.max()) < 512


def test_save_and_load_round_trip(tiny_janus, tmp_path):
    tiny_janus.save(tmp_path / "copy")
    again = JanusBackbone.load(tmp_path / "copy", device="cpu")
    ref = tiny_janus.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in again.model.state_dict().items())
    assert again.special == tiny_janus.special and again.prompt_ids(PROMPTS) == tiny_janus.prompt_ids(PROMPTS)


def test_bad_inputs_fail_with_one_line(tiny_janus, tiny_janus_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_janus_dir, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="missing model.safetensors or model.safetensors.index.json, "
                                         "tokenizer.json or tokenizer.model"):
        JanusBackbone(str(broken))
    with pytest.raises(InputError, match="no such folder"):
        JanusBackbone(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="needs --model"):
        JanusBackbone()
    with pytest.raises(UnknownPluginError, match="did you mean 'janus'"):
        registry("backbones").get("janu")
    with pytest.raises(InputError, match=r"prompt 1 .* this model fits 256 \(max_position_embeddings 512 minus 256"):
        tiny_janus.check_prompts(["fine", "circle " * 300])
    with pytest.raises(InputError, match="top_p"):
        tiny_janus.generate(["a circle"], top_p=1.5)
