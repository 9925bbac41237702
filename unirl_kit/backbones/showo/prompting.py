"""Show-o's universal prompting and omni-attention masks, as pure functions on token ids.

Layouts (facts from the official `training/prompting_utils.py`, `inference_t2i.py`, `inference_mmu.py`):

T2I, one row per image, fixed width `max_text_len + 3 + T` (max_text_len = max_seq_length = 128):
    [PAD]*k <|t2i|> <|endoftext|> text... <|endoftext|> <|soi|> [MASK]*T <|eoi|>
  The first `max_text_len + 1` ids are the left-padded text part (the task token counts); longer texts
  keep their first `max_text_len` ids then end with <|endoftext|>. A text that does not start with BOS
  gets one (BOS = EOS = <|endoftext|> for phi). The unconditional row is the same with the empty
  prompt: [PAD]* <|t2i|> <|endoftext|> <|endoftext|> <|soi|> ... The image tokens are ids [-(T+1), -1).
  Mask (`create_attention_mask_predict_next`, rm_pad_in_image=True): text is causal, every token of
  <|soi|> ... <|eoi|> sees every non-pad token (text and the whole image), nobody sees padding.

MMU (the VQ-token checkpoints; only the CLIP-ViT variants use a system prompt):
    <|mmu|> <|soi|> image tokens <|eoi|> <|endoftext|> ids("USER: \\n" + question + " ASSISTANT:")
  then the answer, stopped by <|endoftext|>. Mask (`create_attention_mask_for_mmu`): causal, plus every
  token sees the whole prefix up to <|eoi|> (so the image is fully visible to itself).
Position ids: the official forward passes none, so they are 0..L-1 over the row. T2I rows have a fixed
width (padding never depends on the batch) and keep that; batched MMU rows are left-padded and count
real tokens only, which equals the official unpadded batch-of-one positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Added to phi-1.5's tokenizer (len 50295) in this order: [PAD] first (add_special_tokens), then these
# nine (add_tokens): so [PAD] = 50295, <|soi|> = 50296, ... <|lvg|> = 50304; image code k = 50305 + k.
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>",
                  "<|lvg|>")
PAD_TOKEN = "[PAD]"
MAX_TEXT_LEN = 128  # configs/showo_demo*.yaml: dataset.preprocessing.max_seq_length


def mmu_question_text(question: str) -> str:
    """The text after <|endoftext|> in an MMU prompt (inference_mmu.py, non-CLIP path)."""
    return "USER: \n" + question + " ASSISTANT:"


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    soi: int
    eoi: int
    t2i: int
    mmu: int
    bos: int  # <|sot|>: the tokenizer's BOS
    eos: int  # <|eot|>: the tokenizer's EOS (stops answers)

    @classmethod
    def showo(cls, llm_vocab_size: int = 50295, endoftext: int = 50256) -> SpecialIds:
        """The ids `UniversalPrompting` gives phi-1.5's tokenizer (order of SPECIAL_TOKENS after [PAD])."""
        base = llm_vocab_size
        return cls(pad=base, soi=base + 1, eoi=base + 2, t2i=base + 5, mmu=base + 6, bos=endoftext,
                   eos=endoftext)


def t2i_text_part(text_ids: Sequence[int], special: SpecialIds, max_text_len: int = MAX_TEXT_LEN) -> list[int]:
    """The left-padded `max_text_len + 1` ids before <|soi|> (t2i_gen_prompt)."""
    text = list(text_ids)
    if not text or text[0] != special.bos:
        text = [special.bos] + text
    ids = [special.t2i] + text + [special.eos]
    budget = max_text_len + 1
    if len(ids) > budget:
        return ids[: budget - 1] + [special.eos]
    return [special.pad] * (budget - len(ids)) + ids


def t2i_row(text_ids: Sequence[int], special: SpecialIds, image_ids: Sequence[int],
            max_text_len: int = MAX_TEXT_LEN) -> list[int]:
    """One T2I row; `image_ids` are vocabulary ids (codes + offset, or the mask id)."""
    return t2i_text_part(text_ids, special, max_text_len) + [special.soi, *image_ids, special.eoi]


def t2i_rows(prompt_ids: Sequence[Sequence[int]], special: SpecialIds, num_tokens: int, mask_id: int,
             with_uncond: bool, max_text_len: int = MAX_TEXT_LEN) -> torch.Tensor:
    """[R, L] rows with all image tokens masked: one per prompt, then (with_uncond) one empty prompt each."""
    masked = [mask_id] * num_tokens
    rows = [t2i_row(p, special, masked, max_text_len) for p in prompt_ids]
    if with_uncond:
        rows += [t2i_row([], special, masked, max_text_len)] * len(prompt_ids)
    return torch.tensor(rows, dtype=torch.long)


def t2i_attention_mask(ids: torch.Tensor, special: SpecialIds) -> torch.Tensor:
    """[R, 1, L, L] bool (True = query may attend key): causal text, full attention inside the image
    segment (<|soi|> .. <|eoi|> see all non-pad tokens), padding hidden from every other token.

    A padding query sees only itself: the official mask lets it see earlier padding, but no other
    token reads a padding position, so the choice changes no output and avoids empty rows."""
    _, length = ids.shape
    is_pad = ids == special.pad
    start = (ids == special.soi).cumsum(-1)
    end = (ids == special.eoi).cumsum(-1)
    in_image = (start > end) | (ids == special.soi) | (ids == special.eoi)
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    mask = torch.where(in_image[:, :, None], torch.ones_like(causal), causal)
    mask = mask & ~is_pad[:, None, :]
    eye = torch.eye(length, dtype=torch.bool, device=ids.device)
    mask = torch.where(is_pad[:, :, None], eye, mask)
    return mask[:, None]


def mmu_prefix(image_ids: Sequence[int], special: SpecialIds) -> list[int]:
    """<|mmu|> <|soi|> image ids <|eoi|> <|endoftext|>: the ids before the question text."""
    return [special.mmu, special.soi, *image_ids, special.eoi, special.bos]


def mmu_row(image_ids: Sequence[int], question_ids: Sequence[int], special: SpecialIds) -> list[int]:
    """An MMU prompt: prefix, then ids of `mmu_question_text(question)` (no BOS of their own)."""
    return mmu_prefix(image_ids, special) + list(question_ids)


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [R, L] and validity [R, L] bool."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            valid[i, width - len(r):] = True
    return ids, valid


def mmu_attention_mask(valid: torch.Tensor, prefix_end: torch.Tensor) -> torch.Tensor:
    """[R, 1, L, L] bool: causal, every query also sees keys up to `prefix_end[r]` (the <|eoi|> index,
    inclusive), padding (valid False) hidden; a padding query sees only itself."""
    _, length = valid.shape
    pos = torch.arange(length, device=valid.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    prefix = pos[None, None, :] <= prefix_end.to(valid.device)[:, None, None]
    mask = (causal | prefix) & valid[:, None, :]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    mask = torch.where(valid[:, :, None], mask, eye)
    return mask[:, None]


def positions(valid: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, so left padding (batch dependent) does not shift them."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def mmu_batch(prompts: Sequence[Sequence[int]],
              special: SpecialIds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, valid, positions, 4D mask) of left-padded MMU rows (prompts, or prompts + answers); the
    prefix of each row ends at its first <|eoi|>."""
    ids, valid = left_pad(prompts, special.pad)
    is_eoi = (ids == special.eoi) & valid
    if not bool(is_eoi.any(-1).all()):
        raise ValueError("every MMU row needs an <|eoi|> (build it with mmu_row)")
    prefix_end = is_eoi.long().argmax(-1)
    return ids, valid, positions(valid), mmu_attention_mask(valid, prefix_end)
