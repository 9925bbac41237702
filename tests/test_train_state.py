"""Checkpoint state without pickle: an exact round trip (optimizer, RNG, arrays, tuples, int keys), a
crafted `state.pt` refused and never run (library, pretrain loader and `unirl train --resume`), the
explicit conversion of a trusted one, and a one-line error for an unreadable state."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unirl_kit.checkpoint import (
    PICKLED_STATE,
    STATE_JSON,
    latest_checkpoint,
    load_checkpoint,
    main,
    read_state,
    save_checkpoint,
    save_state,
    weight_names,
)
from unirl_kit.training.state import load_train_state, rng_state, save_train_state, set_rng_state
from unirl_kit.types import InputError


class _Payload:
    """Unpickling this creates `marker`: proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _same(a, b) -> bool:
    """Equal values of equal types, tensors and arrays by dtype and content."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def _pickled_checkpoint(root: Path, marker: Path) -> Path:
    """root/step-0000001 as an older unirl-kit wrote it, its state.pt carrying the payload."""
    folder = root / "step-0000001"
    folder.mkdir(parents=True)
    save_file({}, folder / "model.safetensors")
    with open(folder / PICKLED_STATE, "wb") as f:
        pickle.dump({"step": 1, "optimizer": _Payload(marker)}, f)
    return folder


def test_state_round_trips_exactly(tmp_path):
    _, optimizer = _trained_optimizer()
    state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "array": np.arange(5, dtype=np.uint32),
             "tagged": {"$tensor": "not a tensor"}, "nan": float("nan"), "pair": (1, "a", None), "nested": [[2.5]]}
    save_state(tmp_path, state)
    back = read_state(tmp_path)
    assert _same(state, back)
    assert not any(p.suffix in (".pt", ".pkl") for p in tmp_path.iterdir())
    drawn = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(back["rng"])  # the generators as they were when saved: the same draws again
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert drawn[:2] == again[:2] and torch.equal(drawn[2], again[2])


def test_a_state_read_shape_only_skips_those_tensors(tmp_path):
    """What an FSDP rank other than 0 reads on a resume: the optimizer's tensors as meta stand-ins of
    their saved shape and dtype (no data), everything else (the RNG state) whole; the weights' names
    from the header alone."""
    model, optimizer = _trained_optimizer()
    folder = save_train_state(tmp_path, 1, dict(model.named_parameters()), optimizer, {}, keep=2)
    full, light = read_state(folder), read_state(folder, shapes_only=("optimizer",))
    assert _same({k: v for k, v in light.items() if k != "optimizer"}, {k: v for k, v in full.items() if k != "optimizer"})
    assert light["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    for i, entry in full["optimizer"]["state"].items():
        for key, value in entry.items():
            stand_in = light["optimizer"]["state"][i][key]
            assert stand_in.is_meta and stand_in.shape == value.shape and stand_in.dtype == value.dtype
    assert sorted(weight_names(folder)) == ["bias", "weight"]


def test_train_state_resumes_the_optimizer(tmp_path):
    model, optimizer = _trained_optimizer()
    save_train_state(tmp_path, 1, dict(model.named_parameters()), optimizer, {"config": "train grpo"}, keep=2)
    fresh = torch.nn.Linear(3, 2)
    resumed = torch.optim.AdamW(fresh.parameters(), lr=1e-3, betas=(0.9, 0.99))
    state = load_train_state(tmp_path, fresh, resumed)
    assert state["step"] == 1 and state["config"] == "train grpo"
    assert _same(resumed.state_dict(), optimizer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True))


def test_a_pickled_state_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload-ran"
    root = tmp_path / "checkpoints"
    folder = _pickled_checkpoint(root, marker)
    model = torch.nn.Linear(3, 2)
    for load in (lambda: load_train_state(root, model, torch.optim.AdamW(model.parameters())),
                 lambda: load_checkpoint(folder, model)):
        with pytest.raises(InputError, match="--trust-pickle") as err:
            load()
        assert "\n" not in str(err.value) and f"convert {root}" in str(err.value)
    assert not marker.exists()


def test_cli_resume_refuses_a_pickled_state(small_janus, prompts, tmp_path, unirl_cli):
    marker = tmp_path / "payload-ran"
    out = tmp_path / "run"
    _pickled_checkpoint(out / "checkpoints", marker)
    proc = unirl_cli("train", "sft", "--resume", f"prompts={prompts}", "backbone.name=janus",
                     f"backbone.model={small_janus}", "backbone.device=cpu", f"run.out={out}", "run.steps=2",
                     "run.progress=false", "run.report_to=[jsonl]", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trust-pickle" in lines[0] and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_conversion_needs_trust_and_keeps_the_state(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    model, optimizer = _trained_optimizer()
    old = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "step": 3, "torch_rng": torch.get_rng_state()}
    folder = root / "step-0000003"
    folder.mkdir(parents=True)
    save_file({k: v.detach() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    torch.save(old, folder / PICKLED_STATE)
    assert main(["convert", str(root)]) == 2  # without --trust-pickle nothing is unpickled
    assert (folder / PICKLED_STATE).is_file() and not (folder / STATE_JSON).exists()
    assert main(["convert", str(root), "--trust-pickle"]) == 0
    assert not (folder / PICKLED_STATE).exists() and _same(old, read_state(folder))
    assert main(["convert", str(root), "--trust-pickle"]) == 2  # nothing left to convert
    assert "no state.pt" in capsys.readouterr().err


def test_unreadable_state_is_a_one_line_error(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"optimizer": {}})
    (folder / STATE_JSON).write_text('{"optimizer": {"$tensor": "99"}}')
    with pytest.raises(InputError, match="lacks"):
        read_state(folder)
    (folder / STATE_JSON).write_text("{not json")
    with pytest.raises(InputError, match="unreadable checkpoint state") as err:
        read_state(folder)
    assert "\n" not in str(err.value)
    assert latest_checkpoint(tmp_path) == folder
