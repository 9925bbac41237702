"""`showo`: Show-o (Phi-1.5 + MAGVIT-v2, masked diffusion) as a registered backbone, native, no research code.

Folders: `--model DIR` is a Show-o checkpoint in the published layout (`config.json` + weights: the
`showlab/show-o` or `show-o-512x512` folder). Two more folders are options, each defaulting to a place
inside DIR so that `save` writes one self-contained folder:
  vq_model   MAGVIT-v2 (`showlab/magvitv2`), default DIR/magvitv2
  tokenizer  phi-1.5's tokenizer (`microsoft/phi-1_5`), default DIR (when it holds tokenizer files)
Show-o's special tokens are added to the tokenizer as `UniversalPrompting` adds them ([PAD], then
<|soi|> ... <|lvg|>), and the ids are checked against the checkpoint's vocabulary layout.

Sampling: MaskGIT over `timesteps` steps (`maskgit.py`); `cfg_scale` follows the project contract
(uncond + s * (cond - uncond)), so Show-o's guidance w is `cfg_scale - 1` (its demo's w = 3 is
cfg_scale 4). top-k / top-p are not part of MaskGIT decoding and are refused. The policy-gradient
log-prob of a token is taken at the step it was revealed, so `generate` returns the trajectory and
`image_logprobs` needs it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from unirl_kit.backbones.base import (
    AnswerScores,
    GenerationBatch,
    Seeds,
    candidate_logprobs_by_rows,
    check_sampling,
    image_seed,
    resolve_cfg_scale,
    resolve_seeds,
    rows_per_prompt,
    to_pil,
    uniform_stream,
)
from unirl_kit.backbones.loading import resolve_device, resolve_dtype
from unirl_kit.backbones.showo import answers as mmu
from unirl_kit.backbones.showo.magvitv2 import load_magvitv2, save_magvitv2
from unirl_kit.backbones.showo.maskgit import (
    maskgit_uniform_count,
    one_pass_logprobs,
    sample_maskgit,
    trajectory_logprobs,
)
from unirl_kit.backbones.showo.model import load_showo, save_showo
from unirl_kit.backbones.showo.prompting import (
    MAX_TEXT_LEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    SpecialIds,
    mmu_question_text,
    mmu_row,
    t2i_attention_mask,
    t2i_rows,
)
from unirl_kit.types import InputError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


class ShowoBackbone:
    """Show-o (VQ-token variants): MaskGIT generation with trajectories, MMU answers, MAGVIT-v2 tokenizer."""

    name: ClassVar[str] = "showo"
    DECODE_CHUNK: ClassVar[int] = 1  # an image must not depend on its batch (conv numerics vary with it)

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto",
                 vq_model: str | None = None, tokenizer: str | None = None, timesteps: int = 18,
                 max_text_len: int = MAX_TEXT_LEN, strict: bool = True) -> None:
        if model is None:
            raise InputError("backbone 'showo' needs --model DIR (a Show-o folder: config.json + weights)")
        root = Path(model)
        if not root.is_dir():
            raise InputError(f"--model {root}: no such folder; give a Show-o checkpoint folder")
        if timesteps < 1:
            raise InputError(f"timesteps: must be at least 1, got {timesteps}")
        vq_dir = Path(vq_model) if vq_model else root / "magvitv2"
        tok_dir = Path(tokenizer) if tokenizer else root
        if not any((tok_dir / f).is_file() for f in _TOKENIZER_FILES):
            raise InputError(f"tokenizer {tok_dir}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass "
                             "backbone.options.tokenizer=PATH (a local microsoft/phi-1_5 folder)")
        if not vq_dir.is_dir():
            raise InputError(f"vq_model {vq_dir}: no such folder; pass backbone.options.vq_model=PATH "
                             "(a local showlab/magvitv2 folder)")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        self.source, self.timesteps, self.max_text_len = str(root), int(timesteps), int(max_text_len)
        self.model = load_showo(root, dev, dt, strict=strict)
        self.vq = load_magvitv2(vq_dir, dev, dt, strict=strict).eval().requires_grad_(False)
        self.tokenizer = _prepared_tokenizer(tok_dir)
        cfg = self.model.config
        self.special = _special_ids(self.tokenizer, cfg.llm_vocab_size, cfg.num_new_special_tokens, tok_dir)
        self.num_image_tokens = int(cfg.num_vq_tokens)
        self.codebook_size = int(cfg.codebook_size)
        if self.vq.config.codebook_size != self.codebook_size:
            raise InputError(f"vq_model {vq_dir}: codebook of {self.vq.config.codebook_size} codes, but the Show-o "
                             f"checkpoint expects {self.codebook_size}")
        side = round(self.num_image_tokens ** 0.5)
        if side * side != self.num_image_tokens:
            raise InputError(f"{root / 'config.json'}: num_vq_tokens {self.num_image_tokens} is not a square grid")
        self.grid = side
        self.image_size = side * self.vq.config.downsample_factor
        self.offset = int(cfg.image_token_offset)
        self.mask_id = int(cfg.mask_token_id)
        self.default_cfg_scale = 4.0  # Show-o's demo guidance w = 3 (cfg_scale = w + 1)

    @classmethod
    def load(cls, path: str | Path, **options) -> ShowoBackbone:
        return cls(model=str(path), **options)

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        """One self-contained folder: Show-o at the root, magvitv2/ beside it, the prepared tokenizer."""
        path = Path(path)
        save_showo(self.model, path, state_dict)
        save_magvitv2(self.vq, path / "magvitv2")
        self.tokenizer.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ---- prompts ---------------------------------------------------------------------------------
    def _text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Text ids of generation prompts, checked against Show-o's text budget."""
        ids = self._text_ids(prompts)
        for i, row in enumerate(ids):
            if len(row) + 1 > self.max_text_len:  # + BOS; the official code would cut the rest silently
                raise InputError(f"prompt {i} ({prompts[i][:40]!r}...) is {len(row) + 1} tokens; Show-o reads "
                                 f"{self.max_text_len} (max_text_len); shorten it")
        return ids

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self._prompt_ids(prompts)

    def _rows(self, prompts: Sequence[str], group: int, cfg_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [row for row in self._prompt_ids(prompts) for _ in range(group)]
        rows = t2i_rows(ids, self.special, self.num_image_tokens, self.mask_id, cfg_scale != 1.0, self.max_text_len)
        return rows, t2i_attention_mask(rows, self.special)

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], group_size: int = 1, seeds: Seeds = 0, cfg_scale: float | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 on_step: Callable[[float], None] | None = None) -> GenerationBatch:
        check_sampling(group_size)
        if top_k is not None or top_p is not None:
            raise InputError("top_k / top_p: not used by Show-o's MaskGIT decoding; leave them null")
        row_seeds = resolve_seeds(seeds, len(prompts), group_size)
        cfg_scale = resolve_cfg_scale(self, cfg_scale)
        t = self.num_image_tokens
        if not row_seeds:
            empty = torch.empty(0, t, dtype=torch.long)
            return GenerationBatch([], empty, torch.empty(0, t), [], empty.clone())
        rows, mask = self._rows(prompts, group_size, cfg_scale)
        uniforms = None if temperature <= 0 else uniform_stream(row_seeds, maskgit_uniform_count(t, self.timesteps))
        codes, step_of, logprobs = sample_maskgit(self.model, rows, mask, t, self.offset, self.codebook_size,
                                                  self.mask_id, self.timesteps, cfg_scale, temperature, uniforms,
                                                  on_step)
        return GenerationBatch(self.decode_tokens(codes), codes, logprobs, row_seeds, step_of)

    def image_logprobs(self, prompts: Sequence[str], tokens: torch.Tensor, cfg_scale: float | None = None,
                       temperature: float = 1.0, with_entropy: bool = False, trajectory: torch.Tensor | None = None):
        """Per-token log-probs at each token's reveal step (the sampler's numbers), teacher-forced."""
        if trajectory is None:
            raise ValueError("showo: image log-probs are defined over the unmasking steps; pass the trajectory "
                             "that generate returned (GenerationBatch.trajectory)")
        cfg_scale = resolve_cfg_scale(self, cfg_scale)
        rows, mask = self._rows(prompts, rows_per_prompt(prompts, tokens), cfg_scale)
        return trajectory_logprobs(self.model, rows, mask, tokens, trajectory, self.offset, self.codebook_size,
                                   self.mask_id, cfg_scale, temperature, with_entropy)

    def one_pass_logprobs(self, prompts: Sequence[str], tokens: torch.Tensor, cfg_scale: float = 4.0,
                          temperature: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The cheaper estimate (one forward, a random share of the tokens masked, as Show-o trains):
        (log-probs of the masked tokens [N, T], which were masked [N, T]); for comparison only."""
        rows, mask = self._rows(prompts, rows_per_prompt(prompts, tokens), cfg_scale)
        uniforms = uniform_stream([image_seed(seed, i, 0) for i in range(tokens.shape[0])], tokens.shape[1] + 1)
        return one_pass_logprobs(self.model, rows, mask, tokens, self.offset, self.codebook_size, self.mask_id,
                                 cfg_scale, temperature, uniforms)

    # ---- understanding ---------------------------------------------------------------------------
    def _mmu_prompts(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[list[int]]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions; pass one of each per row")
        codes = self.encode_images(images) + self.offset
        texts = self._text_ids([mmu_question_text(q) for q in questions])
        return [mmu_row(c.tolist(), q, self.special) for c, q in zip(codes, texts, strict=True)]

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 32,
               greedy: bool = True, seed: int = 0, temperature: float = 1.0) -> list[str]:
        if not questions:
            return []
        uniforms = None if greedy else uniform_stream([image_seed(seed, i, 0) for i in range(len(questions))],
                                                      max_new_tokens)
        ids = mmu.generate_answers(self.model, self._mmu_prompts(images, questions), self.special, max_new_tokens,
                                   uniforms, temperature)
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]

    def answer_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                        answers: Sequence[str]) -> AnswerScores:
        if len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        return mmu.answer_logprobs(self.model, self._mmu_prompts(images, questions), self._text_ids(answers),
                                   self.special)

    def candidate_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                           candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        return candidate_logprobs_by_rows(self, images, questions, candidates)

    # ---- image tokenizer -------------------------------------------------------------------------
    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Show-o's `image_transform`: shorter side to image_size (bicubic), centre crop, [-1, 1]."""
        out = []
        for im in images:
            im = im.convert("RGB")
            scale = self.image_size / min(im.size)
            w, h = max(self.image_size, round(im.width * scale)), max(self.image_size, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
            im = im.crop((left, top, left + self.image_size, top + self.image_size))
            out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(self.image_size,
                                                                                          self.image_size, 3))
        return (torch.stack(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.vq.encode(self.pixels(images)).cpu()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, tokens.shape[0], self.DECODE_CHUNK):
            chunk = tokens[start: start + self.DECODE_CHUNK].to(self.device)
            images += to_pil(self.vq.decode(chunk, (self.grid, self.grid)).permute(0, 2, 3, 1))
        return images


def _prepared_tokenizer(path: Path):
    """phi's tokenizer with Show-o's tokens added as `UniversalPrompting` adds them (a no-op when present)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"tokenizer {path}: cannot load ({str(exc).splitlines()[0]})") from None
    if PAD_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.pad_token = PAD_TOKEN
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing)
    return tok


def _special_ids(tok, llm_vocab_size: int, num_new: int, path: Path) -> SpecialIds:
    """The ids the checkpoint was trained with, checked: [PAD] right after the text vocabulary, then the rest."""
    ids = [tok.convert_tokens_to_ids(t) for t in (PAD_TOKEN, *SPECIAL_TOKENS)]
    if ids != list(range(llm_vocab_size, llm_vocab_size + num_new)):
        raise InputError(f"tokenizer {path}: Show-o's special tokens got ids {ids[0]}..{ids[-1]}, but the checkpoint "
                         f"expects {llm_vocab_size}..{llm_vocab_size + num_new - 1} (llm_vocab_size "
                         f"{llm_vocab_size}); use the tokenizer the checkpoint was trained with (phi-1.5)")
    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    if eos is None:
        raise InputError(f"tokenizer {path}: no EOS token (phi-1.5's is <|endoftext|>)")
    by_name = dict(zip(SPECIAL_TOKENS, ids[1:], strict=True))
    return SpecialIds(pad=ids[0], soi=by_name["<|soi|>"], eoi=by_name["<|eoi|>"], t2i=by_name["<|t2i|>"],
                      mmu=by_name["<|mmu|>"], bos=bos, eos=eos)
