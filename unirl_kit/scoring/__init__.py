"""`unirl score`: rewards for every image of a samples folder, and what they say about GRPO's signal."""
