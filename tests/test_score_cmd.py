"""`unirl score` on a hand-made samples folder (shapes renders in `unirl generate`'s layout, no
model): rows, summary against a hand computation, resume, torn lines, refusals, failures, ranks, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from unirl_kit.backbones.config import BackboneConfig
from unirl_kit.cli import score_cmd
from unirl_kit.config import load_config
from unirl_kit.eval.geneval.layout import write_prompt_folder
from unirl_kit.generation.outputs import write_prompt_outputs
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.prompts.qa import question_answer
from unirl_kit.prompts.schema import parse_spec
from unirl_kit.registry import REGISTRIES, UnknownPluginError
from unirl_kit.rewards.base import RewardError, RewardOutput
from unirl_kit.scoring import run as score_run
from unirl_kit.scoring.run import ScoreConfig, run_score
from unirl_kit.types import InputError
from unirl_kit.worlds.shapes.dataset import image_rng
from unirl_kit.worlds.shapes.render import render_scene

# (tag, controlled error of image 0 and image 1) per prompt, and the GenEval verdicts they give
PLAN = [("single_object", (None, None)), ("counting", (None, "count")), ("counting", ("count", "missing"))]
GENEVAL_SCORES = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
TOKEN_LEN = 4
FIELDS = ["filename", "image", "prompt_index", "image_index", "tag", "prompt", "reward", "rewards", "answer", "details"]


# --------------------------------------------------------------------------------------------
# rewards registered for these tests


class TokensReward:
    """The prompt index, read back from the token ids written for each image (10 * prompt + image)."""

    name = "test-tokens"
    needs_backbone = False
    seen: ClassVar[list[str]] = []

    def __call__(self, samples):
        TokensReward.seen.extend(s.path for s in samples)
        return RewardOutput([float(int(s.tokens[0]) // 10) for s in samples],
                            [{"token": int(s.tokens[0]), "length": len(s.tokens)} for s in samples])


class QaReward:
    """Reports the question and answer of the spec that rewards are given."""

    name = "test-qa"
    needs_backbone = False

    def __call__(self, samples):
        return RewardOutput([1.0] * len(samples),
                            [{"answer": s.spec.answer, "question": s.spec.question} for s in samples])


class FailingReward:
    """Raises on the image named by `FailingReward.fail_on`."""

    name = "test-fail"
    needs_backbone = False
    fail_on: ClassVar[str | None] = None

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, samples):
        if any(s.path == FailingReward.fail_on for s in samples):
            raise ValueError("boom")
        return RewardOutput([self.scale] * len(samples))


class NumpyDetailsReward:
    """Details holding a numpy array: not JSON."""

    name = "test-numpy"
    needs_backbone = False

    def __call__(self, samples):
        return RewardOutput([0.0] * len(samples), [{"mask": np.zeros(2)} for _ in samples])


class BackboneReward:
    """Scores every image with its backbone's `value`."""

    name = "test-backbone"
    needs_backbone = True

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def __call__(self, samples):
        return RewardOutput([self.backbone.value] * len(samples))


for _cls in (TokensReward, QaReward, FailingReward, NumpyDetailsReward, BackboneReward):
    if _cls.name not in REGISTRIES["rewards"]:
        REGISTRIES["rewards"].register(_cls.name, _cls)

GENEVAL = "geneval"  # the built-in: GenEval's verdict with the shapes detector
REWARDS = [GENEVAL, "test-tokens:0.5"]


# --------------------------------------------------------------------------------------------
# the samples folder


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process runs are rank 0 of 1 whatever the environment running the tests says."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(FailingReward, "fail_on", None)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """3 prompts x 2 images in `unirl generate`'s layout; token ids of image k of prompt i: 10 i + k."""
    root = tmp_path_factory.mktemp("samples")
    world, rng = get_world("shapes"), np.random.default_rng(3)
    for i, (tag, errors) in enumerate(PLAN):
        spec = sample_prompt(tag, world, rng)  # no question/answer: `score` derives them
        write_prompt_folder(root, i, spec.to_json())
        images = [render_scene(spec, image_rng(0, i, k), error=err)[0] for k, err in enumerate(errors)]
        tokens = torch.tensor([[10 * i + k] * TOKEN_LEN for k in range(len(errors))])
        write_prompt_outputs(root, i, images, tokens, torch.zeros(len(errors), TOKEN_LEN), [i, i + 1], {"seed": 0})
    return root


def score(samples: Path, out: Path, rewards=REWARDS, **kw: Any) -> dict:
    return run_score(ScoreConfig(samples_dir=str(samples), out=str(out), rewards=list(rewards), progress=False, **kw))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# rows and summary


def test_one_line_per_image_with_its_fields(samples, tmp_path):
    out = tmp_path / "s" / "scores.jsonl"
    score(samples, out, [GENEVAL, "test-tokens:0.5", "test-qa:0"], batch_size=4)
    rows = read_rows(out)
    assert len(rows) == 6
    metas = [json.loads((samples / f"{i:05d}" / "metadata.jsonl").read_text()) for i in range(3)]
    for n, row in enumerate(rows):
        i, k = divmod(n, 2)
        assert list(row) == FIELDS
        assert (row["filename"], row["prompt_index"], row["image_index"]) == (f"{i:05d}/samples/{k:04d}.png", i, k)
        assert (row["tag"], row["prompt"]) == (PLAN[i][0], metas[i]["prompt"])
        assert row["rewards"] == {GENEVAL: GENEVAL_SCORES[n], "test-tokens": float(i), "test-qa": 1.0}
        assert row["reward"] == pytest.approx(GENEVAL_SCORES[n] + 0.5 * i)
        assert row["details"]["test-tokens"] == {"token": 10 * i + k, "length": TOKEN_LEN}
        question, answer = question_answer(parse_spec(metas[i], "test"))
        assert "question" not in metas[i]
        assert row["details"]["test-qa"] == {"question": question, "answer": answer}
        assert row["answer"] is None  # no self-qa among the rewards
        assert set(row["details"]) == {GENEVAL, "test-tokens", "test-qa"}
    for name in ("scores.config.yaml", "scores.versions.json", "scores.rewards.json", "scores_summary.json"):
        assert (out.parent / name).is_file(), name
    assert not (samples / "config.yaml").exists() and not (samples / "scores.jsonl").exists()


def test_scores_and_geneval_results_join_on_image(samples, tmp_path, monkeypatch):
    """results.jsonl's `filename` carries the folder as typed; `image` is the same in both files."""
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval

    score(samples, tmp_path / "scores.jsonl", [GENEVAL])
    monkeypatch.chdir(samples.parent)
    run_geneval(GenevalConfig(images_dir=samples.name, out=str(tmp_path / "ge"), progress=False))
    scores = {r["image"]: r for r in read_rows(tmp_path / "scores.jsonl")}
    results = {r["image"]: r for r in read_rows(tmp_path / "ge" / "results.jsonl")}
    assert len(scores) == 6 and scores.keys() == results.keys()
    for image, row in results.items():
        assert row["filename"] == f"{samples.name}/{image}" != scores[image]["filename"] == image
        assert scores[image]["rewards"][GENEVAL] == float(row["correct"])


def test_rows_written_before_the_join_key_get_it(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    score(samples, out, [GENEVAL])
    fresh = out.read_text()
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "image"}) + "\n" for r in read_rows(out)))
    score(samples, out, [GENEVAL])  # resumes: nothing left to score, the old rows are rewritten with `image`
    assert out.read_text() == fresh


class AnsweringBackbone:
    """Answers every question with the same words (self-qa's only use of a backbone)."""

    def answer(self, images, questions, max_new_tokens=32, greedy=True):
        return ["two crosses"] * len(images)


def test_the_answer_is_self_qa_s(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    run_score(ScoreConfig(samples_dir=str(samples), out=str(out), rewards=["self-qa"], progress=False),
              backbone=AnsweringBackbone())
    rows = read_rows(out)
    assert [r["answer"] for r in rows] == ["two crosses"] * 6
    for row in rows:
        meta = samples / f"{row['prompt_index']:05d}" / "metadata.jsonl"
        spec = parse_spec(json.loads(meta.read_text()), str(meta))
        assert row["details"]["self-qa"]["truth"] == question_answer(spec)[1]


def test_summary_matches_a_hand_computation(samples, tmp_path):
    summary = score(samples, tmp_path / "scores.jsonl")
    assert json.loads((tmp_path / "scores_summary.json").read_text()) == summary
    assert summary["weights"] == {GENEVAL: 1.0, "test-tokens": 0.5}
    # totals 1, 1 | 1.5, 0.5 | 1, 1 (geneval 1 1 | 1 0 | 0 0 plus 0.5 x prompt index)
    overall = summary["overall"]
    assert (overall["samples"], overall["prompts"]) == (6, 3)
    assert overall["total"] == pytest.approx(
        {"mean": 1.0, "std": (0.5 / 6) ** 0.5, "group_std_mean": 0.5 / 3, "zero_std_share": 2 / 3})
    assert overall["rewards"][GENEVAL] == pytest.approx(
        {"mean": 0.5, "std": 0.5, "group_std_mean": 0.5 / 3, "zero_std_share": 2 / 3})
    assert overall["rewards"]["test-tokens"] == pytest.approx(
        {"mean": 1.0, "std": (4 / 6) ** 0.5, "group_std_mean": 0.0, "zero_std_share": 1.0})
    single, counting = summary["tags"]["single_object"], summary["tags"]["counting"]
    assert list(summary["tags"]) == ["single_object", "counting"]
    assert (single["samples"], single["prompts"], counting["samples"], counting["prompts"]) == (2, 1, 4, 2)
    assert single["total"] == pytest.approx({"mean": 1.0, "std": 0.0, "group_std_mean": 0.0, "zero_std_share": 1.0})
    assert counting["total"] == pytest.approx(
        {"mean": 1.0, "std": 0.125 ** 0.5, "group_std_mean": 0.25, "zero_std_share": 0.5})
    assert counting["rewards"][GENEVAL] == pytest.approx(
        {"mean": 0.25, "std": 0.1875 ** 0.5, "group_std_mean": 0.25, "zero_std_share": 0.5})
    groups = summary["groups"]
    assert [g["prompt_index"] for g in groups] == [0, 1, 2]
    assert [g["samples"] for g in groups] == [2, 2, 2]
    for g, std in zip(groups, (0.0, 0.5, 0.0), strict=True):
        assert g["total"] == pytest.approx({"mean": 1.0, "std": std})
    assert groups[1]["rewards"][GENEVAL] == pytest.approx({"mean": 0.5, "std": 0.5})


def test_default_out_is_inside_the_samples_folder(samples, tmp_path):
    folder = tmp_path / "samples"
    shutil.copytree(samples, folder)
    run_score(ScoreConfig(samples_dir=str(folder), rewards=REWARDS, progress=False))
    assert len(read_rows(folder / "scores.jsonl")) == 6
    for name in ("scores_summary.json", "scores.config.yaml", "scores.versions.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "config.yaml").exists()  # generate's own run info stays generate's


# --------------------------------------------------------------------------------------------
# resume


def test_resume_after_deleting_half_the_lines_gives_the_same_file(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    score(samples, out, batch_size=4)
    before = out.read_bytes()
    lines = before.decode().splitlines(keepends=True)
    out.write_text("".join(lines[1::2]))  # rows 0, 2 and 4 gone: the kept ones are out of place
    TokensReward.seen.clear()
    score(samples, out, batch_size=4)
    assert TokensReward.seen == [json.loads(lines[n])["filename"] for n in (0, 2, 4)]
    assert out.read_bytes() == before


def test_a_torn_last_line_is_recovered(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    score(samples, out)
    before = out.read_bytes()
    out.write_bytes(before[:-40])  # killed while writing the last row
    TokensReward.seen.clear()
    score(samples, out)
    assert TokensReward.seen == ["00002/samples/0001.png"]
    assert out.read_bytes() == before


def test_other_rewards_or_weights_are_refused(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    score(samples, out)
    before = out.read_bytes()
    for rewards, options in [([GENEVAL], {}), ([GENEVAL, "test-tokens:0.25"], {}),
                             ([GENEVAL, "test-tokens:0.5", "test-fail"], {}),
                             ([GENEVAL, "test-tokens:0.5", "test-fail"], {"test-fail": {"scale": 2}})]:
        with pytest.raises(InputError, match="use a new --out") as err:
            score(samples, out, rewards, reward_options=options)
        assert "\n" not in str(err.value)
    assert out.read_bytes() == before
    score(samples, out, ["test-tokens:0.5", f"{GENEVAL}:1"])  # same set and weights, other order: fine
    assert out.read_bytes() == before


def test_a_failing_reward_keeps_the_rows_before_it(samples, tmp_path, monkeypatch):
    out = tmp_path / "scores.jsonl"
    monkeypatch.setattr(FailingReward, "fail_on", "00002/samples/0000.png")
    with pytest.raises(RewardError, match=r"'test-fail'.*00002/samples/0000\.png.*boom") as err:
        score(samples, out, [GENEVAL, "test-fail"], batch_size=2)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert [r["filename"] for r in read_rows(out)] == [f"0000{i}/samples/000{k}.png" for i in (0, 1) for k in (0, 1)]
    monkeypatch.setattr(FailingReward, "fail_on", None)
    score(samples, out, [GENEVAL, "test-fail"], batch_size=2)
    assert len(read_rows(out)) == 6


def test_details_that_are_not_json_are_a_reward_error(samples, tmp_path):
    with pytest.raises(RewardError, match=r"'test-numpy'.*00000/samples/0000\.png.*not JSON"):
        score(samples, tmp_path / "scores.jsonl", ["test-numpy"])
    assert not (tmp_path / "scores.jsonl").exists()


# --------------------------------------------------------------------------------------------
# ranks and backbones


def test_two_ranks_give_the_single_process_file(samples, tmp_path, monkeypatch):
    single = tmp_path / "single" / "scores.jsonl"
    want = score(samples, single)
    out = tmp_path / "sharded" / "scores.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert score(samples, out, batch_size=1) == {}
    assert [r["filename"] for r in read_rows(out.with_name("scores.rank1.jsonl"))] == [
        "00000/samples/0001.png", "00001/samples/0001.png", "00002/samples/0001.png"]
    assert out.with_name("scores.rank1.done").is_file() and not out.exists()
    monkeypatch.setenv("RANK", "0")
    assert score(samples, out, rank_timeout_s=5) == want
    assert out.read_bytes() == single.read_bytes()
    leftovers = sorted(p.name for p in out.parent.iterdir() if "rank" in p.name or p.suffix == ".tmp")
    assert leftovers == []


def test_the_backbone_is_built_only_when_a_reward_needs_it(samples, tmp_path):
    nowhere = BackboneConfig(name="no-such-backbone")
    score(samples, tmp_path / "a.jsonl", backbone=nowhere)  # no reward needs it: never looked up
    with pytest.raises(UnknownPluginError, match="no-such-backbone"):
        score(samples, tmp_path / "b.jsonl", ["test-backbone"], backbone=nowhere)

    class Fake:
        value = 0.25

    run_score(ScoreConfig(samples_dir=str(samples), out=str(tmp_path / "c.jsonl"), rewards=["test-backbone"],
                          progress=False), backbone=Fake())
    assert {r["reward"] for r in read_rows(tmp_path / "c.jsonl")} == {0.25}
    header = json.loads((tmp_path / "c.rewards.json").read_text())
    # the flat keys of earlier versions: their scores files resume (backbone.* compares as before)
    assert header["backbone"] == "tiny-shapes" and header["model"] is None and header["backbone_options"] == {}


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_a_one_line_error(samples, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_meta = tmp_path / "no_meta"
    shutil.copytree(samples, no_meta)
    (no_meta / "00001" / "metadata.jsonl").unlink()
    cases = [
        (dict(samples_dir=str(tmp_path / "missing")), InputError, "not a folder"),
        (dict(samples_dir=str(empty)), InputError, "no prompt folders"),
        (dict(samples_dir=str(no_meta)), InputError, "00001/metadata.jsonl: missing"),
        (dict(rewards=["geneva"]), UnknownPluginError, "did you mean 'geneval'"),
        (dict(rewards=["test-qa", "test-qa:2"]), InputError, "given twice"),
        (dict(rewards=["test-qa:x"]), InputError, "NAME:WEIGHT"),
        (dict(rewards=["test-qa"], reward_options={"test-tokens": {}}), InputError, "not among the rewards"),
        (dict(batch_size=0), InputError, "batch_size"),
        (dict(out=str(tmp_path)), InputError, "is a folder"),
    ]
    for kw, exc, text in cases:
        cfg = {"samples_dir": str(samples), "out": str(tmp_path / "o.jsonl"), "rewards": ["test-qa"], **kw}
        with pytest.raises(exc, match=text) as err:
            run_score(ScoreConfig(progress=False, **cfg))
        assert "\n" not in str(err.value), kw
    assert not (tmp_path / "o.jsonl").exists()


def test_shipped_config_loads(tmp_path):
    cfg = load_config(ScoreConfig, Path(__file__).parents[1] / "configs" / "score" / "tiny_shapes.yaml",
                      {"samples_dir": str(tmp_path)}, ["reward_options.geneval.threshold=0.5"])
    assert cfg.rewards == ["self-qa"] and cfg.backbone.name == "tiny-shapes" and cfg.backbone.model is None
    assert cfg.backbone.dtype == "auto"
    assert score_run.scores_path(cfg) == tmp_path / "scores.jsonl"


def test_a_flat_config_of_earlier_versions_loads_into_backbone(tmp_path):
    """`backbone: NAME`, `model`, `backbone_options`, `device` at the top level (before issue 19) read as
    backbone.*; the shortcut options and overrides still win over the file."""
    old = tmp_path / "old.yaml"
    old.write_text("backbone: janus\nmodel: A\nbackbone_options: {chat_template: true}\ndevice: cpu\n")
    cfg = load_config(ScoreConfig, old, {"samples_dir": str(tmp_path), "backbone.model": "B"}, ["backbone.dtype=bf16"])
    assert (cfg.backbone.name, cfg.backbone.model, cfg.backbone.device, cfg.backbone.dtype) == ("janus", "B", "cpu", "bf16")
    assert cfg.backbone.options == {"chat_template": True}
    old.write_text("model: A\nbackbone: {model: C}\n")
    with pytest.raises(InputError, match="'model' moved to 'backbone.model' and both are given; give only backbone.model"):
        load_config(ScoreConfig, old)


# --------------------------------------------------------------------------------------------
# the command


def cli(*args: object):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """A root with one subcommand, as in `unirl`."""

    score_cmd.register(app)
    return CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "200"})


def test_cli_scores_and_prints_the_summary(samples, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = cli("score", samples, "--reward", GENEVAL, "-r", "test-tokens:0.5", "--out", out, "progress=false")
    assert result.exit_code == 0, result.output
    assert "overall" in result.stdout and "counting" in result.stdout and "66.7%" in result.stdout
    assert f"scores: {out}; summary: {tmp_path / 'scores_summary.json'}" in result.stdout
    assert len(read_rows(out)) == 6


def test_cli_errors_are_one_line(samples, tmp_path, monkeypatch):
    result = cli("score", samples, "--reward", "geneva", "--out", tmp_path / "a.jsonl")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("error: ") and "did you mean 'geneval'" in result.stderr
    monkeypatch.setattr(FailingReward, "fail_on", "00001/samples/0001.png")
    result = cli("score", samples, "-r", "test-fail", "--out", tmp_path / "b.jsonl", "batch_size=1")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "'test-fail'" in result.stderr and "00001/samples/0001.png" in result.stderr
    assert len(read_rows(tmp_path / "b.jsonl")) == 3


def test_cli_shortcuts_set_backbone_name_and_model(samples, tmp_path, monkeypatch):
    """`--backbone` / `--model` are backbone.name / backbone.model; backbone.* overrides join them."""
    seen: list[BackboneConfig] = []

    class Fake:
        value = 0.5

    monkeypatch.setattr(score_run, "build_backbone", lambda cfg: seen.append(cfg) or Fake())
    result = cli("score", samples, "-r", "test-backbone", "--backbone", "janus", "--model", "M", "--out",
                 tmp_path / "s.jsonl", "backbone.options.k=1", "backbone.device=cpu", "progress=false")
    assert result.exit_code == 0, result.output
    assert [(c.name, c.model, c.options, c.device, c.dtype) for c in seen] == [("janus", "M", {"k": "1"}, "cpu", "auto")]
    result = cli("score", samples, "-r", "test-backbone", "--out", tmp_path / "t.jsonl", "backbone.fsdp=true")
    assert result.exit_code == 2 and "backbone.fsdp: a training setting; score does not use it" in result.stderr


def test_a_rescore_with_other_rewards_names_the_rewards(tmp_path):
    """The refusal names every differing setting, the rewards first (not the backbone a user never set)."""
    from unirl_kit.scoring.run import _check_same_rewards

    out = tmp_path / "scores.jsonl"
    out.write_text('{"image": "x"}\n')
    old = {"rewards": {"self-qa": 1.0}, "reward_options": {}, "backbone": "tiny-shapes", "model": None,
           "backbone_options": {}}
    (tmp_path / "scores.rewards.json").write_text(json.dumps(old))
    with pytest.raises(InputError, match=r"other settings \(rewards: \{'self-qa': 1.0\} -> \{'geneval': 0.5\}; "
                                         r"backbone: 'tiny-shapes' -> '\(absent\)'"):
        _check_same_rewards(out, {"rewards": {"geneval": 0.5}, "reward_options": {}})
