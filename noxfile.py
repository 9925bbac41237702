"""Sessions: tests (default fast suite), slow, lint, bench, mmdet.

tests/slow/lint/bench run in the environment nox is started from (the project's venv, where
torch is already installed: a fresh 6 GB torch per session would buy nothing). mmdet builds its
own venv with the recipe of docs/environment (torch 2.13 CPU + a prebuilt mmcv wheel + mmdet 3.3), plus
transformers for the conversion parity tests (benchmarks/detector_throughput.py also runs there).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
ROOT = Path(__file__).parent


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The default fast suite (also what .ci/run runs)."""
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=False)
def slow(session: nox.Session) -> None:
    """Tests marked slow (longer end-to-end runs)."""
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "unirl_kit", "tests", "benchmarks", "noxfile.py")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Every benchmark at a small size; each prints its measured ratios; one report in runs/bench/."""
    size = session.posargs[0] if session.posargs else "small"
    session.run("python", str(ROOT / "benchmarks" / "run_all.py"), "--size", size, "--out", str(ROOT / "runs" / "bench"))


def _mmcv_wheel() -> str | None:
    shared = os.environ.get("UNIRL_SHARED_WHEELS", str(ROOT.parent / "shared" / "wheels"))
    found = sorted(glob.glob(os.path.join(shared, "mmcv-2.1.0-*.whl")))
    return found[-1] if found else None


@nox.session(python="3.11", reuse_venv=True)
def mmdet(session: nox.Session) -> None:
    """mmdet's reference detector in its own venv; runs the tests marked `mmdet`."""
    session.install("torch==2.13.0", "setuptools<81", "mmengine==0.10.7")
    wheel = _mmcv_wheel()
    if wheel is None:
        session.log("no prebuilt mmcv wheel found (set UNIRL_SHARED_WHEELS); building mmcv 2.1.0 (>10 min)")
        session.install("--no-build-isolation", "mmcv==2.1.0")
    else:
        session.install(wheel)
    session.install("mmdet==3.3.0")
    # the project without its torch/transformers pins (mmdet needs torch 2.13 and no torchvision)
    session.install("--no-deps", "-e", str(ROOT))
    session.install("pillow", "pyyaml", "scipy", "numpy<2", "typer", "rich", "pandas", "safetensors", "pytest",
                    "hypothesis")
    # the converted detector beside mmdet (parity tests): the main venv's transformers, which runs on torch 2.13
    session.install("transformers==5.24.0")
    # only the mmdet test modules (test_mmdet_adapter, test_mmdet_convert_parity): the others import
    # open_clip/torchvision, absent from this venv
    files = sorted(glob.glob(str(ROOT / "tests" / "test_mmdet*.py")))
    session.run("pytest", "-q", "-m", "mmdet", "-p", "no:cacheprovider", *files, *session.posargs)
