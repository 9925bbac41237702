"""Shared fixtures: the official GenEval files (skipped when absent) and the `unirl` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One intra-op thread: on a shared 2-core box torch's OpenMP threads stall each other (a 0.1 s
# forward took 11 s with 2 threads); results do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The repo sits beside `shared/`; the official files are optional for the test suite.
GENEVAL_SHARED = Path(__file__).resolve().parents[2] / "shared" / "geneval"
OFFICIAL_METADATA = GENEVAL_SHARED / "evaluation_metadata.jsonl"
OFFICIAL_NAMES = GENEVAL_SHARED / "object_names.txt"
UNIRL = Path(sys.executable).parent / "unirl"


@pytest.fixture(scope="session")
def official_rows() -> list[dict]:
    """The 553 official metadata lines, parsed; skips the test when the file is absent."""
    if not OFFICIAL_METADATA.is_file():
        pytest.skip(f"official GenEval metadata not found at {OFFICIAL_METADATA}")
    lines = OFFICIAL_METADATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session")
def official_metadata_file() -> Path:
    """Path of the official metadata file; skips the test when it is absent."""
    if not OFFICIAL_METADATA.is_file():
        pytest.skip(f"official GenEval metadata not found at {OFFICIAL_METADATA}")
    return OFFICIAL_METADATA


@pytest.fixture(scope="session")
def official_names() -> list[str]:
    """The 80 COCO class names in detector order; skips the test when the file is absent."""
    if not OFFICIAL_NAMES.is_file():
        pytest.skip(f"official GenEval object names not found at {OFFICIAL_NAMES}")
    return [line.strip() for line in OFFICIAL_NAMES.read_text().splitlines() if line.strip()]


def run_unirl(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `unirl` console script; `check` fails the test with its stderr."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([str(UNIRL), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"unirl {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_geneval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid GenEval images folder: `unirl prompts --n 6` + `unirl render` (one image each)."""
    root = tmp_path_factory.mktemp("tiny_geneval")
    run_unirl("prompts", "--n", "6", "--out", root / "prompts.jsonl")
    run_unirl("render", root / "prompts.jsonl", "--out", root / "images", "--images-per-prompt", "1")
    return root / "images"


@pytest.fixture(scope="session")
def unirl_cli():
    """`run_unirl` as a fixture, so test modules need not import conftest."""
    return run_unirl


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package), registered in sys.modules so
    its dataclasses resolve their annotations."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_janus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Janus for the trainers' tests (32 px, 8x8 tokens, 2 text layers); a module may define
    its own `small_janus` with another seed (test_loop)."""
    from unirl_kit.testing.tiny_janus import save_random_janus

    return save_random_janus(tmp_path_factory.mktemp("trainers") / "model", text_hidden=64, text_layers=2,
                             image_size=32, seed=1)


@pytest.fixture(scope="session")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 shapes prompts, two of each tag."""
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    out = tmp_path_factory.mktemp("trainer_prompts") / "prompts.jsonl"
    run_prompts(PromptsConfig(world="shapes", n=12, seed=3, out=str(out)))
    return out
