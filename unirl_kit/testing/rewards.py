"""Rewards for tests and benchmarks of the trainers: cheap, need no backbone, and have spread on the noise
images of random models (GenEval-shapes gives noise 0 everywhere, so every group would tie)."""

from __future__ import annotations

import numpy as np

from unirl_kit.rewards.base import RewardOutput

BRIGHTNESS = "test-brightness"
LOW_TOKENS = "test-low-tokens"


class Brightness:
    """Mean pixel brightness in [0, 1]."""

    name = BRIGHTNESS
    needs_backbone = False

    def __call__(self, samples):
        return RewardOutput([float(np.asarray(s.image, dtype=np.float32).mean() / 255.0) for s in samples])


class LowTokens:
    """The share of an image's tokens below `split` (half of a 512 codebook): a reward every token moves,
    so a working policy gradient raises it within a few steps."""

    name = LOW_TOKENS
    needs_backbone = False
    split = 256

    def __call__(self, samples):
        return RewardOutput([float((s.tokens < self.split).float().mean()) for s in samples])


def register_test_rewards(*extra: type) -> None:
    """Add these rewards (and `extra` classes, by their `name`) to the registry once per process."""
    from unirl_kit.registry import REGISTRIES, registry

    registry("rewards")  # built-ins first
    for cls in (Brightness, LowTokens, *extra):
        if cls.name not in REGISTRIES["rewards"].names():
            REGISTRIES["rewards"].register(cls.name, cls)
