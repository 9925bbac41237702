"""Pre-training the embedded default model (tiny-shapes): image tokenizer, then language model."""
