"""Model folders are checked at load: a NaN or Inf in any weight, a tensor missing (transformers would
randomly initialise it with a mere warning) or one the model does not have is a one-line error naming
the file or folder and the tensor; the command exits 2 and writes nothing."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from unirl_kit.cli import app

Edit = Callable[[dict[str, torch.Tensor]], str]  # changes a state dict in place, returns what the error names


def _poison(value: float) -> Edit:
    """Set one element of a floating-point tensor to `value` (NaN or +-Inf)."""

    def edit(state: dict[str, torch.Tensor]) -> str:
        name = next(k for k in sorted(state) if state[k].is_floating_point() and state[k].numel() > 1)
        state[name] = state[name].clone()
        state[name].view(-1)[1] = value
        return name

    return edit


def _drop(state: dict[str, torch.Tensor]) -> str:
    name = sorted(state)[len(state) // 2]
    del state[name]
    return name


def _add(state: dict[str, torch.Tensor]) -> str:
    state["model.extra_head.weight"] = torch.zeros(3, 3)
    return "model.extra_head.weight"


def _reshape(state: dict[str, torch.Tensor]) -> str:
    """One more column on a matrix: the name is right, the shape another model's."""
    name = next(k for k in sorted(state) if state[k].is_floating_point() and state[k].dim() == 2)
    state[name] = torch.zeros(state[name].shape[0], state[name].shape[1] + 1, dtype=state[name].dtype)
    return name


EDITS: dict[str, tuple[Edit, str]] = {  # case -> (edit, what the message says beside the tensor)
    "nan": (_poison(float("nan")), "NaN or Inf"),
    "inf": (_poison(float("inf")), "NaN or Inf"),
    "-inf": (_poison(float("-inf")), "NaN or Inf"),
    "missing": (_drop, "lack tensor"),
    "unexpected": (_add, "hold tensor"),
}
# transformers folders only: Show-o's own loader words its shape check in its own way
JANUS_EDITS: dict[str, tuple[Edit, str]] = {**EDITS, "shape": (_reshape, "but the model expects")}


def _edit_weights(file: Path, edit: Edit) -> str:
    """Rewrite a safetensors file with `edit` applied; returns the tensor name the error must give."""
    state = load_file(str(file))
    name = edit(state)
    save_file(state, str(file), metadata={"format": "pt"})
    return name


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    out = tmp_path_factory.mktemp("weights_prompts") / "prompts.jsonl"
    run_prompts(PromptsConfig(n=1, seed=0, out=str(out)))
    return out


def _generate(backbone: str, model: Path, prompts: Path, out: Path):
    return CliRunner().invoke(app, ["generate", "--backbone", backbone, "--model", str(model), "--prompts",
                                    str(prompts), "--out", str(out), "--group-size", "1", "backbone.device=cpu"],
                              env={"NO_COLOR": "1", "COLUMNS": "200"})


def _assert_refused(result, out: Path, *parts: str) -> None:
    """Exit 2, one stderr line holding every part, no traceback, nothing written."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(p in lines[0] for p in parts), (parts, lines[0])
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("backbone", ["janus", "tiny-shapes"])
@pytest.mark.parametrize("case", list(JANUS_EDITS))
def test_a_damaged_janus_folder_is_refused(small_janus, prompts_file, tmp_path, backbone, case):
    """The transformers path (Janus, and tiny-shapes pointed at another export)."""
    model = tmp_path / "model"
    shutil.copytree(small_janus, model)
    edit, says = JANUS_EDITS[case]
    name = _edit_weights(model / "model.safetensors", edit)
    result = _generate(backbone, model, prompts_file, tmp_path / "out")
    where = str(model / "model.safetensors") if says == "NaN or Inf" else str(model)
    _assert_refused(result, tmp_path / "out", where, repr(name), says)


def test_the_sharded_file_holding_the_bad_tensor_is_named(small_janus, prompts_file, tmp_path):
    """A folder saved in shards: the error names the shard that holds the tensor, from the index."""
    import json

    model = tmp_path / "model"
    shutil.copytree(small_janus, model)
    state = load_file(str(model / "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(model / shard), metadata={"format": "pt"})
    (model / "model.safetensors").unlink()
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    name = _edit_weights(model / "model-00002-of-00002.safetensors", _poison(float("nan")))
    result = _generate("janus", model, prompts_file, tmp_path / "out")
    _assert_refused(result, tmp_path / "out", str(model / "model-00002-of-00002.safetensors"), repr(name))


@pytest.fixture(scope="module")
def showo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unirl_kit.testing.tiny_showo import save_random_showo

    return save_random_showo(tmp_path_factory.mktemp("weights_showo") / "model", seed=0)


@pytest.mark.parametrize("part", ["", "magvitv2"])  # the Show-o transformer, then its image tokenizer
@pytest.mark.parametrize("case", list(EDITS))
def test_a_damaged_showo_folder_is_refused(showo_dir, prompts_file, tmp_path, part, case):
    model = tmp_path / "model"
    shutil.copytree(showo_dir, model)
    edit, says = EDITS[case]
    file = model / part / "model.safetensors"
    name = _edit_weights(file, edit)
    result = _generate("showo", model, prompts_file, tmp_path / "out")
    # Show-o's own key check words its message as "N missing / unexpected keys, e.g. NAME"
    says = {"lack tensor": "missing", "hold tensor": "unexpected"}.get(says, says)
    where = str(file) if says == "NaN or Inf" else str(model / part).rstrip("/")
    _assert_refused(result, tmp_path / "out", where, name, says)


def test_an_intact_folder_still_loads(small_janus):
    """The checks pass a good folder and leave its weights as they are."""
    from unirl_kit.registry import registry

    backbone = registry("backbones").build("janus", model=str(small_janus), device="cpu")
    saved = load_file(str(small_janus / "model.safetensors"))
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
