"""Plain-function rewards in TRL's shape, `fn(prompts, images, **kwargs) -> list[float]`: registered,
given as a lazy `module:function` target, refused with one line when they break the contract, and
run through `unirl score` on a hand-made samples folder."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_score_cmd import cli  # the in-process `unirl score`: the functions registered here are seen

from unirl_kit.eval.geneval.layout import write_prompt_folder
from unirl_kit.generation.outputs import write_prompt_outputs
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.registry import REGISTRIES, UnknownPluginError
from unirl_kit.rewards.base import RewardError, Sample, build_rewards, parse_reward_spec
from unirl_kit.scoring.run import ScoreConfig, run_score
from unirl_kit.types import InputError
from unirl_kit.worlds.shapes.dataset import image_rng
from unirl_kit.worlds.shapes.render import render_scene

SEEN: dict[str, object] = {}


def prompt_length(prompts, images, **kwargs) -> list[float]:
    """Words in the prompt, times `scale`."""
    SEEN.update(kwargs, prompts=prompts, images=images)
    return [kwargs.get("scale", 1.0) * len(p.split()) for p in prompts]


def only_images(images) -> list[float]:
    """Declares no **kwargs: gets only `images`."""
    return np.ones(len(images), dtype=np.float32)  # numpy scalars are numbers too


def broken(prompts, images, **kwargs):
    """Whatever `broken.mode` says."""
    mode = broken.mode
    if mode == "nan":
        return [math.nan] * len(prompts)
    if mode == "short":
        return [1.0] * (len(prompts) - 1)
    if mode == "none":
        return None
    return [None] * len(prompts)


broken.mode = "nan"

for _name, _fn in (("fn-length", prompt_length), ("fn-images", only_images), ("fn-broken", broken)):
    if _name not in REGISTRIES["rewards"]:
        REGISTRIES["rewards"].register(_name, _fn)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    SEEN.clear()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """2 prompts x 2 images in `unirl generate`'s layout."""
    root = tmp_path_factory.mktemp("samples")
    world, rng = get_world("shapes"), np.random.default_rng(5)
    for i, tag in enumerate(("single_object", "counting")):
        spec = sample_prompt(tag, world, rng)
        write_prompt_folder(root, i, spec.to_json())
        images = [render_scene(spec, image_rng(0, i, k))[0] for k in range(2)]
        tokens = torch.zeros(2, 4, dtype=torch.long)
        write_prompt_outputs(root, i, images, tokens, torch.zeros(2, 4), [i, i + 1], {"seed": 0})
    return root


@pytest.fixture
def reward_module(tmp_path, monkeypatch) -> str:
    """A tiny importable module with a function reward; returns its `module:function` target."""
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent('''
        def tag_is_counting(prompts, images, metadata, **kwargs):
            return [float(m["tag"] == "counting") for m in metadata]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards_mod", raising=False)
    return "my_rewards_mod:tag_is_counting"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def some_samples(n: int = 2) -> list[Sample]:
    world, rng = get_world("shapes"), np.random.default_rng(0)
    specs = [sample_prompt("single_object", world, rng) for _ in range(n)]
    return [Sample(spec=s, image=render_scene(s, image_rng(0, i, 0))[0], prompt_index=i) for i, s in enumerate(specs)]


# --------------------------------------------------------------------------------------------


def test_a_registered_function_gets_prompts_images_metadata_and_options():
    batch = some_samples()
    composed = build_rewards(["fn-length:2"], {"fn-length": {"scale": 0.5}})
    out = composed(batch)
    totals, records = out.scores, out.details
    words = [len(s.spec.prompt.split()) for s in batch]
    assert [r["rewards"]["fn-length"] for r in records] == [0.5 * w for w in words]
    assert totals == [2 * 0.5 * w for w in words]
    assert SEEN["prompts"] == [s.spec.prompt for s in batch]
    assert SEEN["images"] == [s.image for s in batch]
    assert SEEN["metadata"] == [s.spec.to_json() for s in batch]
    assert SEEN["samples"] == batch and SEEN["scale"] == 0.5


def test_a_function_without_kwargs_gets_only_what_it_declares():
    out = build_rewards(["fn-images"])(some_samples(3))
    totals = out.scores
    assert totals == [1.0, 1.0, 1.0]
    with pytest.raises(InputError, match="unknown option 'scale'"):
        build_rewards(["fn-images"], {"fn-images": {"scale": 2}})


def test_a_module_function_target(reward_module):
    assert parse_reward_spec(reward_module) == (reward_module, 1.0)
    assert parse_reward_spec(f"{reward_module}:0.25") == (reward_module, 0.25)
    batch = some_samples()
    out = build_rewards([f"{reward_module}:3"])(batch)
    totals, records = out.scores, out.details
    assert totals == [0.0, 0.0] and list(records[0]["rewards"]) == [reward_module]


def test_a_target_that_does_not_import_is_one_line():
    with pytest.raises(UnknownPluginError) as err:
        build_rewards(["no_such_module_xyz:fn"])
    assert "no_such_module_xyz" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="NAME:WEIGHT"):
        parse_reward_spec("fn-length:abc")


@pytest.mark.parametrize(("mode", "words"), [
    ("nan", "gave nan"), ("short", "returned 1 scores for 2 samples"),
    ("none", "returned NoneType, expected a list"), ("nones", "gave None")])
def test_the_contract_is_enforced_with_one_line(monkeypatch, mode, words):
    monkeypatch.setattr(broken, "mode", mode, raising=False)
    with pytest.raises(RewardError) as err:
        build_rewards(["fn-broken"])(some_samples())
    assert "'fn-broken'" in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# through `unirl score`


def test_score_with_a_registered_function_and_a_target(samples, tmp_path, reward_module):
    out = tmp_path / "scores.jsonl"
    summary = run_score(ScoreConfig(samples_dir=str(samples), out=str(out), progress=False,
                                    rewards=["fn-images", f"{reward_module}:0.5"]))
    got = rows(out)
    assert len(got) == 4
    assert [r["rewards"] for r in got] == [{"fn-images": 1.0, reward_module: float(i >= 2)} for i in range(4)]
    assert [r["reward"] for r in got] == [1.0, 1.0, 1.5, 1.5]
    assert summary["weights"] == {"fn-images": 1.0, reward_module: 0.5}


def test_cli_accepts_a_target_and_refuses_a_broken_function_in_one_line(samples, tmp_path, reward_module,
                                                                         monkeypatch):
    out = tmp_path / "a.jsonl"
    result = cli("score", samples, "--reward", reward_module, "--out", out, "progress=false")
    assert result.exit_code == 0, result.output
    assert [r["rewards"][reward_module] for r in rows(out)] == [0.0, 0.0, 1.0, 1.0]
    monkeypatch.setattr(broken, "mode", "nan", raising=False)
    result = cli("score", samples, "-r", "fn-broken", "--out", tmp_path / "b.jsonl", "progress=false")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("error: ") and "'fn-broken'" in result.stderr and "nan" in result.stderr
