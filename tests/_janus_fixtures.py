"""Session fixtures shared by the Janus backbone and `unirl generate` tests: one random tiny Janus.

Loaded as a plugin (`pytest_plugins = ["_janus_fixtures"]` in both modules), so it is built and
loaded once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny-shapes architecture (64 px, 256 image tokens, codebook 512) with random weights, saved."""
    from unirl_kit.testing.tiny_janus import save_random_janus

    return save_random_janus(tmp_path_factory.mktemp("tiny_janus") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_janus(tiny_janus_dir: Path):
    """The `janus` backbone loaded from `tiny_janus_dir` (CPU, fp32)."""
    from unirl_kit.registry import registry

    return registry("backbones").build("janus", model=str(tiny_janus_dir), device="cpu")
