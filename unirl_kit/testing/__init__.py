"""Helpers for tests and benchmarks: tiny randomly initialised models saved the way real ones are.

No weights can be downloaded in CI, so the real loading code is exercised on these instead.
"""

from unirl_kit.testing.tiny_models import save_tiny_clip, save_tiny_mask2former

__all__ = ["save_tiny_clip", "save_tiny_mask2former"]
