"""Show-o transformer, prompting, omni-attention masks, MaskGIT sampler and MMU answers on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unirl_kit.backbones.base import uniform_stream
from unirl_kit.backbones.showo.answers import answer_logits, answer_logprobs, generate_answers, greedy_answers
from unirl_kit.backbones.showo.maskgit import (
    image_scores,
    masked_after_steps,
    maskgit_uniform_count,
    one_pass_logprobs,
    sample_maskgit,
    trajectory_logprobs,
)
from unirl_kit.backbones.showo.model import (
    SHOWO_1_3B_PARAMS,
    Showo,
    ShowoConfig,
    expected_keys,
    load_showo,
    save_showo,
)
from unirl_kit.backbones.showo.prompting import (
    SpecialIds,
    mmu_batch,
    mmu_row,
    t2i_attention_mask,
    t2i_row,
    t2i_rows,
    t2i_text_part,
)
from unirl_kit.types import InputError

CFG = ShowoConfig.tiny()  # 16 image tokens, codebook 32, text vocab 64
SP = SpecialIds.showo(CFG.llm_vocab_size, endoftext=5)
T, OFF, C, MASK = CFG.num_vq_tokens, CFG.image_token_offset, CFG.codebook_size, CFG.mask_token_id
STEPS = 6


@pytest.fixture(scope="module")
def model() -> Showo:
    torch.manual_seed(0)
    m = Showo(CFG).eval()
    with torch.no_grad():  # larger than the default init, so distributions are far from uniform
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _t2i(prompts, cfg_scale):
    rows = t2i_rows(prompts, SP, T, MASK, with_uncond=cfg_scale != 1.0, max_text_len=8)
    return rows, t2i_attention_mask(rows, SP)


def _sample(model, prompts, seeds, cfg_scale=3.0, temperature=1.0):
    rows, mask = _t2i(prompts, cfg_scale)
    u = uniform_stream(seeds, maskgit_uniform_count(T, STEPS)) if temperature > 0 else None
    out = sample_maskgit(model, rows, mask, T, OFF, C, MASK, STEPS, cfg_scale, temperature, u)
    return rows, mask, out


def _grid(mask: torch.Tensor) -> list[str]:
    return ["".join("x" if v else "." for v in row) for row in mask[0, 0].tolist()]


# ---- configuration and prompts ------------------------------------------------------------------

def test_official_config_and_ids():
    official = {"_class_name": "Showo", "_version": "0.0.1", "w_clip_vit": False, "vocab_size": 58498,
                "llm_vocab_size": 50295, "llm_model_path": "microsoft/phi-1_5", "codebook_size": 8192,
                "num_vq_tokens": 1024, "num_new_special_tokens": 10, "load_from_showo": False,
                "mask_token_id": 58497}
    cfg = ShowoConfig.from_dict(official)
    assert (cfg.image_token_offset, cfg.mask_token_id, cfg.num_vq_tokens) == (50305, 58497, 1024)
    assert cfg.llm_config["qk_layernorm"] and cfg.llm_config["hidden_size"] == 2048
    sp = SpecialIds.showo()
    assert (sp.pad, sp.soi, sp.eoi, sp.t2i, sp.mmu, sp.bos, sp.eos) == (50295, 50296, 50297, 50300, 50301,
                                                                        50256, 50256)
    with pytest.raises(InputError, match="vocab_size"):
        ShowoConfig.from_dict({**official, "vocab_size": 58000}, where="x/config.json")


def test_param_count_of_real_config():
    shapes = expected_keys(ShowoConfig())
    assert sum(math.prod(s) for s in shapes.values()) == SHOWO_1_3B_PARAMS
    assert shapes["showo.model.embed_tokens.weight"] == (58498, 2048)
    assert shapes["showo.lm_head.bias"] == (58498,)
    assert shapes["showo.model.layers.23.self_attn.q_layernorm.weight"] == (64,)


def test_t2i_layout():
    p, t2i, bos, eos, soi, eoi = SP.pad, SP.t2i, SP.bos, SP.eos, SP.soi, SP.eoi
    assert t2i_text_part([7, 8], SP, max_text_len=6) == [p, p, t2i, bos, 7, 8, eos]
    assert t2i_text_part([bos, 7], SP, max_text_len=6) == [p, p, p, t2i, bos, 7, eos]  # BOS not doubled
    assert t2i_text_part([], SP, max_text_len=6) == [p, p, p, p, t2i, bos, eos]  # the unconditional row
    long = t2i_text_part(list(range(10, 30)), SP, max_text_len=6)
    assert long == [t2i, bos, 10, 11, 12, 13, eos]  # truncated, still closed by EOS
    assert t2i_row([7], SP, [MASK, MASK], max_text_len=4) == [p, t2i, bos, 7, eos, soi, MASK, MASK, eoi]
    rows = t2i_rows([[7], [8, 9]], SP, T, MASK, with_uncond=True, max_text_len=8)
    assert rows.shape == (4, 8 + 3 + T)
    assert rows[2].tolist() == rows[3].tolist() == t2i_row([], SP, [MASK] * T, max_text_len=8)
    assert (rows[:, -(T + 1):-1] == MASK).all() and (rows[:, -1] == eoi).all()


def test_t2i_omni_mask_by_hand():
    row = t2i_row([7], SP, [MASK, MASK], max_text_len=5)  # P P t2i bos 7 eos soi M M eoi
    assert row[:2] == [SP.pad, SP.pad]
    assert _grid(t2i_attention_mask(torch.tensor([row]), SP)) == [
        "x.........",  # padding: itself only
        ".x........",
        "..x.......",  # text: causal, padding hidden
        "..xx......",
        "..xxx.....",
        "..xxxx....",
        "..xxxxxxxx",  # <|soi|>, image tokens, <|eoi|>: every non-pad token, later ones included
        "..xxxxxxxx",
        "..xxxxxxxx",
        "..xxxxxxxx",
    ]


def test_mmu_layout_and_mask_by_hand():
    long = mmu_row([OFF + 1, OFF + 2], [20, 21], SP)
    assert long == [SP.mmu, SP.soi, OFF + 1, OFF + 2, SP.eoi, SP.bos, 20, 21]
    ids, valid, pos, mask = mmu_batch([long, mmu_row([OFF + 3, OFF + 4], [22], SP)], SP)
    assert ids[1, 0] == SP.pad and not valid[1, 0] and pos[1].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    assert _grid(mask[:1]) == [
        "xxxxx...",  # <|mmu|> <|soi|> image <|eoi|>: the whole prefix
        "xxxxx...",
        "xxxxx...",
        "xxxxx...",
        "xxxxx...",
        "xxxxxx..",  # then causal
        "xxxxxxx.",
        "xxxxxxxx",
    ]
    assert _grid(mask[1:])[0] == "x......."  # padding sees itself only
    assert _grid(mask[1:])[1] == ".xxxxx.." and _grid(mask[1:])[6] == ".xxxxxx."


# ---- model and checkpoints ----------------------------------------------------------------------

def test_4d_mask_is_applied(model):
    ids = torch.randint(0, 64, (2, 10))
    causal = torch.ones(10, 10, dtype=torch.bool).tril().expand(2, 1, 10, 10)
    with torch.no_grad():
        plain = model.showo(input_ids=ids).logits
        assert torch.allclose(model(ids, causal), plain, atol=1e-6)  # same format as the built-in mask
        full = model(ids, torch.ones(2, 1, 10, 10, dtype=torch.bool))
        omni = model(ids, t2i_attention_mask(torch.tensor([t2i_row([7], SP, [MASK, MASK], 5)] * 2), SP))
    assert (full - plain).abs()[:, :-1].max() > 1e-2  # early positions now see later ones
    assert (omni - plain).abs()[:, 6:9].max() > 1e-2


def test_expected_keys_match_state_dict(model):
    assert expected_keys(CFG) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_save_load_round_trip(model, tmp_path):
    save_showo(model, tmp_path / "ck")
    loaded = load_showo(tmp_path / "ck")
    ids = torch.randint(0, 64, (1, 9))
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["_class_name"] == "Showo"


def test_load_official_bin_layout(model, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CFG.to_dict()))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_showo(folder, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert loaded.showo.model.rotary_emb.inv_freq.dtype == torch.float32


def _write(folder, state):
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CFG.to_dict()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def test_strict_errors_name_folder_and_keys(model, tmp_path):
    state = dict(model.state_dict())
    _write(tmp_path / "missing", {k: v for k, v in state.items() if k != "showo.lm_head.bias"})
    with pytest.raises(InputError, match=r"missing.*1 missing keys, e\.g\. showo\.lm_head\.bias"):
        load_showo(tmp_path / "missing")
    load_showo(tmp_path / "missing", strict=False)  # tolerated when not strict
    _write(tmp_path / "extra", {**state, "mm_projector.0.weight": torch.zeros(2, 2)})
    with pytest.raises(InputError, match=r"extra.*unexpected keys, e\.g\. mm_projector\.0\.weight"):
        load_showo(tmp_path / "extra")
    _write(tmp_path / "shape", {**state, "showo.lm_head.bias": torch.zeros(3)})
    with pytest.raises(InputError, match=r"shape.*showo\.lm_head\.bias \(3,\) \(expected \(107,\)\)"):
        load_showo(tmp_path / "shape", strict=False)
    with pytest.raises(InputError, match="no config.json"):
        load_showo(tmp_path / "nowhere")


# ---- MaskGIT -------------------------------------------------------------------------------------

def test_schedule_and_each_token_revealed_once(model):
    # floor(16 * cos(pi/2 * s/6)) in float32 as the official code computes it (cos(pi/3) -> 7, not 8)
    assert masked_after_steps(16, 6) == [15, 13, 11, 7, 4, 0]
    assert masked_after_steps(256, 18)[:3] == [255, 252, 247] and masked_after_steps(256, 18)[-1] == 0
    _, _, (codes, step_of, lps) = _sample(model, [[7, 8], [9]], [11, 12])
    assert ((codes >= 0) & (codes < C)).all() and (lps < 0).all()
    remaining = [16] + masked_after_steps(16, 6)
    for n in range(2):
        counts = torch.bincount(step_of[n], minlength=STEPS).tolist()
        assert counts == [remaining[s] - remaining[s + 1] for s in range(STEPS)]  # sums to T: each once


@pytest.mark.parametrize("cfg_scale,temperature", [(3.0, 1.0), (1.0, 0.7), (2.0, 0.0)])
def test_sampled_equals_teacher_forced(model, cfg_scale, temperature):
    rows, mask, (codes, step_of, lps) = _sample(model, [[7, 8], [9], [10, 11, 12]], [1, 2, 3], cfg_scale,
                                                temperature)
    tf, ent = trajectory_logprobs(model, rows, mask, codes, step_of, OFF, C, MASK, cfg_scale, temperature,
                                  with_entropy=True, steps_per_chunk=4)
    assert torch.allclose(tf, lps, atol=1e-5)
    assert (ent > 0).all() and ent.max() <= math.log(C) + 1e-4
    tf.sum().backward()
    assert model.showo.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_batch_independence(model):
    prompts, seeds = [[7, 8], [9], [10, 11, 12, 13]], [21, 22, 23]
    _, _, batch = _sample(model, prompts, seeds)
    _, _, alone = _sample(model, prompts[1:2], seeds[1:2])
    assert torch.equal(batch[0][1:2], alone[0]) and torch.equal(batch[1][1:2], alone[1])
    assert torch.allclose(batch[2][1:2], alone[2], atol=1e-6)
    _, _, again = _sample(model, prompts, [21, 99, 23])
    assert not torch.equal(again[0][1], batch[0][1])  # the seed, not the batch, decides


def test_cfg_scores_against_full_logits(model):
    rows, mask = _t2i([[7, 8], [9]], 3.0)
    with torch.no_grad():
        full = model(rows, mask)[:, -(T + 1):-1, OFF:-1]  # the official slice: codebook, no mask column
        cond, uncond = full[:2], full[2:]
        guided = image_scores(model, rows, mask, T, OFF, C, 3.0, 1.0, 2)
        assert torch.allclose(guided, (1 + 2.0) * cond - 2.0 * uncond, atol=1e-4)  # Show-o w = 2
        plain = image_scores(model, rows[:2], mask[:2], T, OFF, C, 1.0, 1.0, 2)
        assert torch.allclose(plain, cond, atol=1e-5)  # cfg_scale 1 (Show-o w = 0): conditional only


def test_one_pass_logprobs(model):
    rows, mask, (codes, _, _) = _sample(model, [[7, 8], [9]], [1, 2])
    u = uniform_stream([5, 6], T + 1)
    lp, masked = one_pass_logprobs(model, rows, mask, codes, OFF, C, MASK, 3.0, 1.0, u)
    expect = (T * torch.cos(u[:, 0] * math.pi / 2)).round().clamp(min=1)
    assert masked.sum(-1).tolist() == expect.long().tolist()
    assert (lp[~masked] == 0).all() and (lp[masked] < 0).all()
    lp2, _ = one_pass_logprobs(model, rows, mask, codes, OFF, C, MASK, 3.0, 1.0, u)
    assert torch.equal(lp, lp2)


# ---- MMU answers ---------------------------------------------------------------------------------

def test_greedy_answers_are_teacher_forced_argmax(model):
    prompts = [mmu_row([OFF + 1, OFF + 2, OFF + 3], [20, 21, 22], SP), mmu_row([OFF + 4, OFF + 5, OFF + 6], [23], SP)]
    answers = greedy_answers(model, prompts, SP, max_new_tokens=6)
    assert [greedy_answers(model, [p], SP, 6)[0] for p in prompts] == answers  # padding changes nothing
    logits, present, token_ids = answer_logits(model, prompts, answers, SP)
    # every decoded token (the closing EOS only where decoding stopped at it, not at max_new_tokens)
    decoded = present & (torch.arange(present.shape[1]) < torch.tensor([len(a) + (len(a) < 6) for a in answers])[:, None])
    assert decoded.sum() >= 6
    assert torch.equal(logits.argmax(-1)[decoded], token_ids[decoded])
    scores = answer_logprobs(model, prompts, answers, SP)
    assert torch.allclose(scores.logprobs[decoded], logits.log_softmax(-1).max(-1).values[decoded], atol=1e-5)
    assert torch.allclose(scores.logprobs[present], logits.log_softmax(-1).gather(-1, token_ids[..., None])[..., 0][present])
    assert (scores.logprobs[~present] == 0).all()


def test_sampled_answers_cached_equal_recomputed(model):
    """Each KV-cached decoding step draws what a full teacher-forced recompute of its prefix draws."""
    prompts = [mmu_row([OFF + 1, OFF + 2, OFF + 3], [20, 21, 22], SP), mmu_row([OFF + 4, OFF + 5], [23], SP)]
    u = uniform_stream([3, 4], 8)
    answers = generate_answers(model, prompts, SP, 8, uniforms=u, temperature=0.9)
    assert len(set(answers[0])) > 3  # varied answers, so a wrong cache would show
    for n, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        for t in range(len(answer)):
            logits = answer_logits(model, [prompt], [answer[:t]], SP)[0][0, t].double() / 0.9
            cdf = logits.softmax(-1).cumsum(-1)
            assert int(torch.searchsorted(cdf, u[n, t] * cdf[-1], right=True)) == answer[t]
    assert generate_answers(model, prompts[1:], SP, 8, uniforms=u[1:], temperature=0.9)[0] == answers[1]
