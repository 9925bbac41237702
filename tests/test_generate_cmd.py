"""`unirl generate`: prompt files, the output layout, determinism across batch sizes and ranks, resume,
one-line errors, and the CLI end to end into `unirl eval geneval`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unirl_kit.backbones.config import BackboneConfig, SamplingConfig
from unirl_kit.generation.outputs import TOKENS_FILE, read_prompt_samples
from unirl_kit.generation.prompts import read_prompt_file
from unirl_kit.generation.run import GenerateConfig, run_generate
from unirl_kit.types import InputError

pytest_plugins = ["_janus_fixtures"]  # the shared random tiny Janus (session fixtures)

METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "counting", "include": [{"class": "square", "count": 2}], "exclude": [{"class": "square", "count": 3}],
     "prompt": "a photo of two squares"},
]
SETTINGS = ["sampling.cfg_scale=3", "seed=5"]


@pytest.fixture(scope="session")
def cli_out(tmp_path_factory, tiny_janus_dir) -> Path:
    """`unirl generate` through the CLI (in-process: a new process would spend seconds importing torch):
    2 prompts x 2 images, one batch of 4."""
    from typer.testing import CliRunner

    from unirl_kit.cli import app

    root = tmp_path_factory.mktemp("generate")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    args = ["generate", "--backbone", "janus", "--model", str(tiny_janus_dir), "--prompts", str(prompts),
            "--group-size", "2", "--out", str(root / "out"), "--batch-size", "4", *SETTINGS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["images"] == 4
    return root / "out"


def _config(out: Path, prompts: Path, model: Path, cfg_scale: float | None = 3.0, **kw) -> GenerateConfig:
    base = dict(backbone=BackboneConfig(name="janus", model=str(model), device="cpu", dtype="auto"),
                sampling=SamplingConfig(cfg_scale=cfg_scale), prompts=str(prompts), out=str(out), group_size=2, seed=5,
                progress=False)
    return GenerateConfig(**{**base, **kw})


def _same_outputs(a: Path, b: Path, index: int) -> None:
    sa, sb = read_prompt_samples(a, index), read_prompt_samples(b, index)
    assert torch.equal(sa["tokens"], sb["tokens"]) and torch.equal(sa["seeds"], sb["seeds"])
    torch.testing.assert_close(sa["logprobs"], sb["logprobs"], atol=1e-5, rtol=0)
    for k in range(2):
        rel = f"{index:05d}/samples/{k:04d}.png"
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_prompt_files_jsonl_text_and_mixed(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(json.dumps(METADATA[0]) + "\n\n  a red diamond  \n")
    assert read_prompt_file(path) == [METADATA[0], {"prompt": "a red diamond"}]
    path.write_text(" \n\n")
    with pytest.raises(InputError, match="no prompts .*the file is empty"):
        read_prompt_file(path)
    path.write_text("a circle\n{\"tag\": \"x\", \"prompt\": \n")
    with pytest.raises(InputError, match=r"p.txt:2: malformed JSON"):
        read_prompt_file(path)
    path.write_text(json.dumps({"tag": "single_object", "prompt": "a circle"}) + "\n")
    with pytest.raises(InputError, match=r"p.txt:1: field 'include'"):
        read_prompt_file(path)
    with pytest.raises(InputError, match="file not found"):
        read_prompt_file(tmp_path / "none.txt")


def test_cli_writes_geneval_layout_tokens_and_grid_then_eval_runs(cli_out, tmp_path, unirl_cli):
    for i, meta in enumerate(METADATA):
        folder = cli_out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert (folder / "grid.png").is_file()
        data = read_prompt_samples(cli_out, i)
        assert data["tokens"].shape == data["logprobs"].shape == (2, 256)
        assert data["header"]["cfg_scale"] == 3.0 and data["header"]["backbone"] == "janus"
        assert bool((data["logprobs"] <= 0).all())
    assert (cli_out / "config.yaml").is_file() and (cli_out / "versions.json").is_file()
    unirl_cli("eval", "geneval", cli_out, "--detector", "shapes", "--out", tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["overall"] <= 1.0  # random weights: a number, not a good one


def test_same_images_whatever_batch_size_or_number_of_ranks(cli_out, tiny_janus, tiny_janus_dir, tmp_path,
                                                            monkeypatch):
    """The CLI ran one batch of 4 on one rank; here rank 0 of 2 runs batches of 1, rank 1 a batch of 3."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, batch_size in ((0, 1), (1, 3)):
        monkeypatch.setenv("RANK", str(rank))
        report = run_generate(_config(tmp_path / "out", prompts, tiny_janus_dir, batch_size=batch_size), tiny_janus)
        assert (report["prompts"], report["images"], report["world"]) == (1, 2, 2)
    for i in range(2):
        _same_outputs(cli_out, tmp_path / "out", i)


def test_resume_regenerates_only_unfinished_prompts(cli_out, tiny_janus, tiny_janus_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cli_out, out)
    (out / "00001" / TOKENS_FILE).unlink()  # as if killed before prompt 1 was finished
    (out / "00001" / "samples" / "0001.png").unlink()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    report = run_generate(_config(out, prompts, tiny_janus_dir, batch_size=4), tiny_janus)
    assert (report["already_done"], report["images"]) == (1, 2)
    _same_outputs(cli_out, out, 1)
    with pytest.raises(InputError, match="holds images made with sampling.cfg_scale=3.0, not 2.0"):
        run_generate(_config(out, prompts, tiny_janus_dir, cfg_scale=2.0), tiny_janus)
    prompts.write_text("".join(json.dumps(m) + "\n" for m in reversed(METADATA)))
    with pytest.raises(InputError, match="00000/metadata.jsonl: holds another prompt"):
        run_generate(_config(out, prompts, tiny_janus_dir), tiny_janus)


def test_unset_cfg_scale_is_the_weights_own(cli_out, tiny_janus_dir, tmp_path):
    """cfg_scale=None takes the model folder's generation_config `guidance_scale` (here 3, the CLI run's):
    the same images as the explicit run, 3.0 in the saved config, and a resume with None is accepted."""
    import yaml

    from unirl_kit.backbones.base import resolve_cfg_scale
    from unirl_kit.registry import registry

    model = tmp_path / "model"
    shutil.copytree(tiny_janus_dir, model)
    gen_file = model / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    gen_file.write_text(json.dumps({**gen, "guidance_scale": 3.0}))
    backbone = registry("backbones").build("janus", model=str(model), device="cpu")
    assert backbone.default_cfg_scale == 3.0
    assert resolve_cfg_scale(backbone, 1.0) == 1.0
    assert resolve_cfg_scale(SimpleNamespace(default_cfg_scale=None), None) == 5.0  # type: ignore[arg-type]
    own, explicit = (backbone.generate(["a photo of a circle"], seeds=1, **kw).tokens for kw in ({}, {"cfg_scale": 3.0}))
    assert torch.equal(own, explicit)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    out = tmp_path / "out"
    run_generate(_config(out, prompts, model, cfg_scale=None), backbone)
    for i in range(2):
        _same_outputs(cli_out, out, i)
    assert yaml.safe_load((out / "config.yaml").read_text())["sampling"]["cfg_scale"] == 3.0
    assert run_generate(_config(out, prompts, model, cfg_scale=None), backbone)["already_done"] == 2


def _old_format_config(out: Path, prompts: Path, model: Path) -> dict:
    """The config.yaml `unirl generate` wrote before issue 19: backbone and sampling settings flat."""
    return {"command": "generate", "backbone": "janus", "model": str(model), "backbone_options": {},
            "prompts": str(prompts), "out": str(out), "group_size": 2, "batch_size": 4, "cfg_scale": 3.0,
            "temperature": 1.0, "top_k": None, "top_p": None, "seed": 5, "device": "auto", "dtype": "auto",
            "progress": True}


def test_a_run_folder_of_the_flat_format_resumes(cli_out, tiny_janus, tiny_janus_dir, tmp_path):
    """A folder whose config.yaml has the flat keys of earlier versions (`model`, `cfg_scale`, ...) resumes
    with the same settings in today's shape, and refuses others naming the new key."""
    import yaml

    out = tmp_path / "out"
    shutil.copytree(cli_out, out)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    (out / "config.yaml").write_text(yaml.safe_dump(_old_format_config(out, prompts, tiny_janus_dir), sort_keys=False))
    (out / "00001" / TOKENS_FILE).unlink()
    with pytest.raises(InputError, match="holds images made with sampling.cfg_scale=3.0, not 2.0"):
        run_generate(_config(out, prompts, tiny_janus_dir, cfg_scale=2.0), tiny_janus)
    with pytest.raises(InputError, match="holds images made with backbone.model="):
        run_generate(_config(out, prompts, tmp_path / "other"), tiny_janus)
    report = run_generate(_config(out, prompts, tiny_janus_dir, batch_size=4), tiny_janus)
    assert (report["already_done"], report["images"]) == (1, 2)
    _same_outputs(cli_out, out, 1)
    saved = yaml.safe_load((out / "config.yaml").read_text())  # rewritten in today's shape
    assert saved["backbone"]["name"] == "janus" and saved["sampling"]["cfg_scale"] == 3.0 and "model" not in saved


def test_shortcut_flags_and_nested_overrides_set_the_backbone(tmp_path):
    """`--backbone` / `--model` set backbone.name / backbone.model; `backbone.*` and `sampling.*` overrides
    win over them; the flat keys of earlier versions still read, into the same place."""
    from unirl_kit.cli.common import resolve

    cli = {"backbone.name": "janus", "backbone.model": "A", "prompts": "p.txt"}
    cfg = resolve(GenerateConfig, None, cli, ["sampling.cfg_scale=2", "backbone.options.chat_template=true",
                                              "backbone.device=cpu"])
    assert (cfg.backbone.name, cfg.backbone.model, cfg.backbone.device, cfg.backbone.dtype) == ("janus", "A", "cpu", "auto")
    assert cfg.backbone.options == {"chat_template": "true"} and cfg.sampling.cfg_scale == 2.0
    assert resolve(GenerateConfig, None, cli, ["backbone.model=B"]).backbone.model == "B"
    old = resolve(GenerateConfig, None, cli, ["model=B", "cfg_scale=4", "top_k=3", "device=cpu", "backbone_options.x=1"])
    assert (old.backbone.model, old.backbone.device, old.backbone.options) == ("B", "cpu", {"x": "1"})
    assert (old.sampling.cfg_scale, old.sampling.top_k) == (4.0, 3)
    with pytest.raises(InputError, match="'model' moved to 'backbone.model' and both are given"):
        resolve(GenerateConfig, None, {}, ["model=B", "backbone.model=C"])
    with pytest.raises(InputError, match="backbone.fsdp: a training setting; generate does not use it"):
        run_generate(GenerateConfig(backbone=BackboneConfig(fsdp=True), prompts=str(tmp_path / "p"), out=str(tmp_path)))


def test_prompt_longer_than_the_context(tiny_janus, tiny_janus_dir, tmp_path):
    prompts = tmp_path / "long.txt"
    prompts.write_text("a circle\n" + "circle " * 300 + "\n")
    with pytest.raises(InputError, match=r"long.txt: prompt 1 .* is 302 tokens; this model fits 256"):
        run_generate(_config(tmp_path / "out", prompts, tiny_janus_dir), tiny_janus)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_cli_errors_are_one_line(tmp_path, unirl_cli):
    """Bad input fails before torch loads (a missing checkpoint file: test_backbone_janus)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a circle\n")
    proc = unirl_cli("generate", "--backbone", "janu", "--prompts", prompts, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown backbone 'janu'; did you mean 'janus'")
    proc = unirl_cli("generate", "--backbone", "janus", "--prompts", tmp_path / "none.txt", "--out", tmp_path / "o",
                     check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --prompts {tmp_path / 'none.txt'}: file not found"
