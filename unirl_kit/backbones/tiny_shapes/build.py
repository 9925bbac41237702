"""The tiny-shapes architecture: a word-level tokenizer, a JanusConfig and a JanusProcessor.

Why these sizes: 64x64 images (the shapes world's default), tokenised 4x (16x16 = 256 VQ tokens;
see pretrain/tokenizer.py) for generation. Understanding reads the image through Janus's own vision
tower, one feature per patch: with 8x8 patches that is 64 features, not 256. A first language-model
run with 4x4 patches (256 features, so ~270-token understanding prompts) learnt colours but never
shape names, not even copying them from the question (understanding loss flat at ~0.55 from step
600 to 2,750); with 64 features the sequence is 4x shorter and a step ~30% cheaper. The processor's
`num_image_tokens` (placeholders) and the vision config's (tokens generated) are separate numbers
in transformers, so the two paths can differ. A Llama text model of width 256 and 4 layers (as a
trial of the same class found trainable on 2 CPU cores) reads both; input and output embeddings
are untied, as in Janus-Pro.
"""

from __future__ import annotations

from typing import Any

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural
from unirl_kit.prompts.qa import QUESTIONS
from unirl_kit.types import RELATIONS
from unirl_kit.worlds.shapes.vocab import COLORS, SHAPES

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
SPECIALS = [PAD, BOS, EOS, UNK, IMAGE, BOI, EOI]
IMAGE_SIZE = 64
NUM_IMAGE_TOKENS = 256  # generated VQ tokens per image (16x16)
VISION_PATCH = 8  # the understanding encoder's patch: 8x8 patches -> 64 features per image
NUM_UND_FEATURES = (IMAGE_SIZE // VISION_PATCH) ** 2  # image placeholders in an understanding prompt
CAPTION_QUESTION = "Describe the image."  # answered by the prompt that drew it


def vocabulary() -> list[str]:
    """Every word the shapes world's prompts, questions and answers use (lower case)."""
    words: set[str] = set()
    texts = ["a photo of a an and the is of", *QUESTIONS.values(), *RELATIONS, *NUMBER_WORDS[:6],
             *SHAPES, *(make_plural(s) for s in SHAPES), *COLORS, CAPTION_QUESTION, "there . ? ,"]
    for text in texts:
        words.update(text.replace("{a}", "").replace("{b}", "").replace("?", " ? ").replace(".", " . ")
                     .lower().split())
    return SPECIALS + sorted(words)


def build_tokenizer():
    """A word-level fast tokenizer (lower-cased, '.' '?' ',' split off), BOS prepended."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation("isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
        padding_side="left", model_max_length=512,
    )


def build_config(vq: dict[str, Any], text_hidden: int = 256, text_layers: int = 4, vision_hidden: int = 128,
                 vision_layers: int = 2, vocab_size: int | None = None):
    """JanusConfig with the given VQ config (a JanusVQVAEConfig dict) and tiny text/vision towers."""
    from transformers import JanusConfig, JanusVQVAEConfig, LlamaConfig

    vocab = vocabulary()
    text = LlamaConfig(
        vocab_size=vocab_size or len(vocab), hidden_size=text_hidden, intermediate_size=4 * text_hidden,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, pad_token_id=vocab.index(PAD), bos_token_id=vocab.index(BOS),
        eos_token_id=vocab.index(EOS), tie_word_embeddings=False,
    )
    vision = vision_config(vision_hidden, vision_layers, text_hidden)
    vq_cfg = JanusVQVAEConfig(**{**vq, "projection_dim": text_hidden, "image_token_embed_dim": text_hidden})
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq_cfg,
                       image_token_id=vocab.index(IMAGE), tie_word_embeddings=False)


def vision_config(vision_hidden: int = 128, vision_layers: int = 2, text_hidden: int = 256):
    """The understanding tower's config; the vision pre-training stage builds the same one."""
    from transformers import JanusVisionConfig

    return JanusVisionConfig(
        image_size=IMAGE_SIZE, patch_size=VISION_PATCH, hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers, num_attention_heads=4,
        projection_dim=text_hidden, depth=2, num_image_tokens=NUM_IMAGE_TOKENS,
    )


def build_processor(tokenizer=None):
    from transformers import JanusImageProcessor, JanusProcessor

    image_processor = JanusImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        min_size=4, do_convert_rgb=True,
    )
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(),
                          num_image_tokens=NUM_UND_FEATURES)
