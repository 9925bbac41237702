"""tiny-shapes: the embedded default model, Janus's own class at a tiny size, trained on the shapes world."""
