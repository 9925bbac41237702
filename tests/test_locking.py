"""One writer per output folder: a second run into a held folder fails at once (exit 2, one line naming
the folder and the holder's pid) and changes nothing; ranks of one run and in-process nesting never
block themselves; a lock left by a killed run never blocks a resume."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unirl_kit.cli import app
from unirl_kit.locking import holds_output_locks, lock_output, lock_path
from unirl_kit.prompts.generate import generate_prompts
from unirl_kit.types import InputError
from unirl_kit.worlds.shapes.dataset import render_prompt_set

# A run that holds FOLDER's lock (as rank RANK) until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from unirl_kit.locking import holds_output_locks, lock_output

@holds_output_locks
def hold():
    lock_output(Path(sys.argv[1]), sys.argv[2])
    print("locked", flush=True)
    time.sleep(600)

hold()
"""


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process runs are rank 0 of 1 whatever the environment running the tests says."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@contextmanager
def held(folder: Path, prefix: str = "", rank: int = 0) -> Iterator[subprocess.Popen]:
    """Another process holding the lock while the block runs; killed (SIGKILL) after it."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(max(rank + 1, 1))}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), prefix], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "locked", proc.communicate(timeout=30)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@holds_output_locks
def stage(folder: Path, prefix: str = "") -> Path:
    """A stage that only takes its folder's lock."""
    return lock_output(folder, prefix)


def unirl(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (lock files included), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(result, folder: Path, proc: subprocess.Popen) -> None:
    """Exit 2 and one line naming the folder and the holder's pid."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "another run is writing it" in lines[0], lines[0]
    assert str(folder) in lines[0] and f"pid {proc.pid}" in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# the lock itself


def test_a_held_folder_is_refused_naming_the_folder_and_the_holder(tmp_path):
    with held(tmp_path / "out") as proc:
        with pytest.raises(InputError, match=rf"{tmp_path / 'out'}: another run is writing it \(pid {proc.pid} on host"):
            stage(tmp_path / "out")
        assert stage(tmp_path / "other") == lock_path(tmp_path / "other")  # another folder is free


def test_the_lock_is_released_when_the_stage_returns_or_raises(tmp_path):
    @holds_output_locks
    def failing() -> None:
        lock_output(tmp_path / "out")
        raise InputError("bad input")

    with pytest.raises(InputError, match="bad input"):
        failing()
    stage(tmp_path / "out")
    assert lock_path(tmp_path / "out").read_bytes() == b""  # the holder's note goes with its lock
    with held(tmp_path / "out"):  # another process takes it at once
        pass


def test_a_stage_reenters_a_folder_its_own_process_holds(tmp_path):
    """The loop runs the stages in-process: its own folder, a subfolder, and the same folder again."""
    out = tmp_path / "loop"

    @holds_output_locks
    def loop() -> None:
        lock_output(out)
        stage(out / "round-000" / "samples")
        stage(out)  # re-entered, not deadlocked
        assert "another run is writing it" in probe(out)  # still held after the inner stages returned
        assert probe(out / "round-000" / "samples") is None

    loop()
    assert probe(out) is None


def probe(folder: Path) -> str | None:
    """Try the lock from another process: None when it got it, else its refusal."""
    code = ("import sys; from pathlib import Path; from unirl_kit.locking import holds_output_locks, lock_output\n"
            "from unirl_kit.types import InputError\n"
            "try:\n    holds_output_locks(lock_output)(Path(sys.argv[1]))\n"
            "except InputError as e:\n    print(e); sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.strip() if proc.returncode else None


def test_ranks_of_one_run_share_the_folder_and_a_second_run_meets_each(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with held(out, rank=0) as proc:
        monkeypatch.setenv("RANK", "1")
        stage(out)  # rank 1 of the same run
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(InputError, match=f"pid {proc.pid}"):
            stage(out)  # rank 0 of a second run
    with held(out, rank=1):
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(InputError, match="another run is writing it"):
            stage(out)  # rank 1 of a second run


def test_a_file_output_has_its_own_lock_beside_it(tmp_path):
    with held(tmp_path, prefix="scores.") as proc:
        assert lock_path(tmp_path, "scores.").name == ".scores.unirl.lock"
        with pytest.raises(InputError, match=f"pid {proc.pid}"):
            stage(tmp_path, "scores.")
        stage(tmp_path, "other.")
        stage(tmp_path)


def test_lock_output_outside_a_stage_is_a_bug(tmp_path):
    with pytest.raises(RuntimeError, match="holds_output_locks"):
        lock_output(tmp_path / "out")


def test_an_output_folder_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        stage(tmp_path / "out")


def test_a_lock_left_by_a_killed_run_does_not_block_a_resume(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 3, 1), images, images_per_prompt=1, seed=1)
    out = tmp_path / "eval"
    with held(out) as proc:
        pass  # killed with SIGKILL: no cleanup ran
    assert proc.returncode == -9
    assert f'"pid": {proc.pid}' in lock_path(out).read_text()  # its stale note is still there
    result = unirl("eval", "geneval", images, "--out", out)
    assert result.exit_code == 0, result.output
    assert lock_path(out).read_bytes() == b""


# --------------------------------------------------------------------------------------------
# every command that writes a folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lock_prompts") / "prompts.jsonl"
    assert unirl("prompts", "--n", "2", "--seed", "1", "--out", out).exit_code == 0
    return out


def refused_without_change(out: Path, args: list[object], prefix: str = "", root: Path | None = None) -> None:
    """With another run holding OUT's lock, the command is refused and nothing under `root` changes."""
    root = root or out
    with held(out, prefix) as proc:
        before = snapshot(root)
        result = unirl(*args)
        assert_refused(result, out, proc)
        assert snapshot(root) == before


def test_render_refuses_a_held_folder(prompts_file, tmp_path):
    out = tmp_path / "images"
    args = ["render", prompts_file, "--out", out, "--images-per-prompt", "1"]
    assert unirl(*args).exit_code == 0
    refused_without_change(out, args)


def test_eval_geneval_refuses_a_held_folder(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 4, 2), images, images_per_prompt=1, seed=2)
    out = tmp_path / "eval"
    args = ["eval", "geneval", images, "--detector", "shapes", "--out", out]
    assert unirl(*args).exit_code == 0
    refused_without_change(out, args)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4  # no row written twice, and a rerun passes
    assert unirl(*args).exit_code == 0


def test_score_refuses_a_held_scores_file(tmp_path):
    images = tmp_path / "images"
    render_prompt_set(generate_prompts("shapes", 4, 2), images, images_per_prompt=1, seed=2)
    args = ["score", images, "--reward", "geneval"]
    assert unirl(*args).exit_code == 0
    refused_without_change(images, args, prefix="scores.")


def test_generate_refuses_a_held_folder(prompts_file, tmp_path):
    out = tmp_path / "samples"
    args = ["generate", "--backbone", "tiny-shapes", "--prompts", prompts_file, "--group-size", "1", "--out", out,
            "progress=false"]
    assert unirl(*args).exit_code == 0
    refused_without_change(out, args)


def test_eval_understanding_refuses_a_held_folder(tmp_path):
    out = tmp_path / "und"
    args = ["eval", "understanding", "--protocol", "clean", "--out", out, "per_tag=1", "progress=false"]
    assert unirl(*args).exit_code == 0
    refused_without_change(out, args)


@pytest.mark.parametrize("args", [
    ["train", "grpo", "prompts={prompts}", "run.out={out}"],
    ["train", "sft", "prompts={prompts}", "run.out={out}"],
    ["loop", "out={out}"],
    ["pretrain", "out={out}"],
], ids=["train-grpo", "train-sft", "loop", "pretrain"])
def test_trainers_loop_and_pretrain_refuse_a_held_folder(args, prompts_file, tmp_path):
    """Refused before any model loads; what an earlier run left stays as it was."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "earlier.json").write_text('{"kept": true}\n')
    refused_without_change(out, [a.format(prompts=prompts_file, out=out) for a in args])
