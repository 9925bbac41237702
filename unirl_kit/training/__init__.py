"""Post-training (GRPO) pieces: the loss numerics here, the trainer loop on top."""
