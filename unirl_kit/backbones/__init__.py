"""Unified multimodal backbones (generate images and answer questions about them)."""
