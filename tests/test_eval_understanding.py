"""`unirl eval understanding`: metric arithmetic on hand-made tables, every protocol with a fake
(oracle or constant) backbone, resume, the CLI, and one end-to-end run of the shipped tiny-shapes model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from unirl_kit.backbones.config import BackboneConfig
from unirl_kit.eval.understanding.clean import clean_scenes_with_objects
from unirl_kit.eval.understanding.imbalance import aggregate, imbalance
from unirl_kit.eval.understanding.pope import choose_negatives, parse_yes_no, pope_metrics
from unirl_kit.eval.understanding.runner import PopeOptions, UnderstandingConfig, run_understanding
from unirl_kit.eval.understanding.vqa import read_vqa, score_answer
from unirl_kit.registry import REGISTRIES
from unirl_kit.types import InputError

_POPE_Q = re.compile(r"^Is there an? (.+) in the image\?$")


def _key(image) -> tuple:
    return image.size, image.tobytes()


class Oracle:
    """Answers from a lookup of image -> (self-QA answer, classes drawn); `wrong` images get a bad answer."""

    image_size = 64

    def __init__(self) -> None:
        self.truth: dict[tuple, tuple[str, set[str]]] = {}
        self.wrong: set[tuple] = set()
        self.questions: list[str] = []

    def learn(self, image, answer: str, classes) -> None:
        self.truth[_key(image)] = (answer, set(classes))

    def answer(self, images, questions, max_new_tokens=32, greedy=True, seed=0, temperature=1.0) -> list[str]:
        self.questions += list(questions)
        out = []
        for im, q in zip(images, questions, strict=True):
            answer, classes = self.truth.get(_key(im), ("nothing", set()))
            asked = _POPE_Q.match(q)
            if asked:
                out.append("Yes, there is." if asked.group(1) in classes else "No.")
            else:
                out.append("a purple nothing" if _key(im) in self.wrong else answer)
        return out


class AlwaysYes:
    """A constant backbone for the CLI, registered as `fake-und`."""

    image_size = 64

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto") -> None:
        pass

    def answer(self, images, questions, max_new_tokens=32, greedy=True, seed=0, temperature=1.0) -> list[str]:
        return ["yes" for _ in questions]


def _oracle_for_clean(per_tags: list[int], seed: int = 0) -> Oracle:
    oracle = Oracle()
    for per_tag in per_tags:
        for spec, image, classes in clean_scenes_with_objects("shapes", per_tag, seed, 64):
            oracle.learn(image, spec.answer, classes)
    return oracle


# ---- pure metrics ---------------------------------------------------------------------------------

def test_pope_metrics_on_a_hand_made_confusion_table() -> None:
    # 4 TP, 1 FN, 1 unparsed positive; 3 FP, 3 TN, 1 unparsed negative: 13 questions, 6 true "yes".
    truth = [True] * 6 + [False] * 7
    predicted = [True] * 4 + [False, None] + [True] * 3 + [False] * 3 + [None]
    m = pope_metrics(truth, predicted)
    assert m["counts"] == {"tp": 4, "fp": 3, "tn": 3, "fn": 1, "unparsed": 2, "questions": 13}
    assert m["accuracy"] == pytest.approx(7 / 13)  # (TP + TN) / all; unparsed are wrong
    assert m["precision"] == pytest.approx(4 / 7)  # TP / (TP + FP)
    assert m["recall"] == pytest.approx(4 / 6)  # TP / every true yes (the unparsed positive is a miss)
    assert m["f1"] == pytest.approx(8 / 13)  # 2PR/(P+R) = 2TP / (2TP + FP + misses)
    assert m["yes_ratio"] == pytest.approx(7 / 13)
    assert m["unparsed"] == pytest.approx(2 / 13)
    empty = pope_metrics([], [])
    assert empty["accuracy"] == empty["f1"] == 0.0
    with pytest.raises(ValueError):
        pope_metrics([True], [])


def test_yes_no_parsing_takes_the_first_yes_or_no_word() -> None:
    assert parse_yes_no("Yes, there is a circle.") is True
    assert parse_yes_no("NO.") is False
    assert parse_yes_no("There is no circle, yes") is False
    assert parse_yes_no("a red circle") is None
    assert parse_yes_no("Yesterday nobody came") is None


def test_negative_sampling_strategies() -> None:
    vocab = ["a", "b", "c", "d", "e"]
    present = [{"a"}, {"a", "b"}, {"b", "c"}, {"d"}]
    rng = np.random.default_rng(0)
    for objs, neg in zip(present, choose_negatives(present, vocab, "random", rng), strict=True):
        assert len(neg) == len(objs) and not set(neg) & objs and len(set(neg)) == len(neg)
    # frequencies a2 b2 c1 d1 e0: the most frequent absent classes, ties in vocabulary order
    assert choose_negatives(present, vocab, "popular", rng) == [["b"], ["c", "d"], ["a", "d"], ["a"]]
    # co-occurrence: a-b 1, b-c 1; {"d"} co-occurs with nothing, so frequency decides
    assert choose_negatives(present, vocab, "adversarial", rng) == [["b"], ["c", "d"], ["a", "d"], ["a"]]
    assert choose_negatives([set(vocab)], vocab, "random", rng) == [[]]  # nothing absent: no negatives


def test_imbalance_on_a_hand_made_table() -> None:
    gen = {"a": True, "b": True, "c": False, "d": False, "e": True}
    und = {"a": True, "b": False, "c": True, "d": False, "e": False}
    m = imbalance(gen, und)
    assert m["counts"] == {"gen_right_und_wrong": 2, "und_right_gen_wrong": 1, "both_right": 1, "both_wrong": 1}
    assert (m["gen_right_und_wrong"], m["und_right_gen_wrong"]) == (pytest.approx(0.4), pytest.approx(0.2))
    assert m["imbalance"] == pytest.approx(0.6) and m["prompts"] == 5
    with pytest.raises(ValueError, match="same prompts"):
        imbalance({"a": True}, {"b": True})
    assert [aggregate([True, True, False, False], r) for r in ("any", "majority", "all")] == [True, False, False]
    assert aggregate([True, True, False], "majority") and aggregate([True], "all")


# ---- VQA ------------------------------------------------------------------------------------------

def test_vqa_file_scoring_and_one_line_errors(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    good = [{"image": "red.png", "question": "What colour?", "answers": ["red", "red", "Red.", "pink"], "type": "color"},
            {"image": "red.png", "question": "How many?", "answers": ["one", "1"], "qid": 7}]
    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in good))
    assert [it.type for it in read_vqa(path)] == ["color", "all"]
    assert score_answer("RED", ["red", "red", "Red.", "pink"]) == (True, 1.0)
    assert score_answer("two", ["two", "2"]) == (True, pytest.approx(1 / 3))
    cfg = UnderstandingConfig(protocols=["vqa"], vqa_file=str(path), out=str(tmp_path / "out"), progress=False)

    class Fixed(Oracle):
        def answer(self, images, questions, **kw):
            return ["red" if "colour" in q else "three" for q in questions]

    m = run_understanding(cfg, Fixed())["protocols"]["vqa"]
    assert m["accuracy"] == 0.5 and m["soft_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2, (min(3/3,1) + 0) / 2
    assert m["types"]["color"]["accuracy"] == 1.0 and m["types"]["all"]["accuracy"] == 0.0
    bad = [({"image": "red.png", "question": "q"}, "'answers'"), ({"image": "blue.png", "question": "q",
           "answers": ["x"]}, "'image'"), ({"image": "red.png", "question": "", "answers": ["x"]}, "'question'"),
           ({"image": "red.png", "question": "q", "answers": ["x"], "type": 3}, "'type'")]
    for obj, field in bad:
        path.write_text(json.dumps(good[0]) + "\n" + json.dumps(obj) + "\n")
        with pytest.raises(InputError, match=rf"vqa\.jsonl:2: field {field}"):
            read_vqa(path)


# ---- clean renders and POPE on clean renders ------------------------------------------------------

def test_clean_and_pope_with_an_oracle_then_resume(tmp_path: Path) -> None:
    cfg = UnderstandingConfig(protocols=["clean", "pope"], per_tag=2, pope=PopeOptions(n_images=9),
                              out=str(tmp_path), progress=False)
    oracle = _oracle_for_clean([2, math.ceil(9 / 6)])
    summary = run_understanding(cfg, oracle)
    clean, pope = summary["protocols"]["clean"], summary["protocols"]["pope"]
    assert clean["overall"] == 1.0 and set(clean["accuracy"].values()) == {1.0} and clean["overall_credit"] == 1.0
    assert pope["images"] == 9 and pope["accuracy"] == 1.0 and pope["f1"] == 1.0 and pope["unparsed"] == 0.0
    assert pope["yes_ratio"] == 0.5  # balanced: one absent object per present one
    rows = [json.loads(ln) for ln in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sum(r["protocol"] == "clean" for r in rows) == 12 and sum(r["protocol"] == "pope" for r in rows) > 9
    assert {"config.yaml", "versions.json", "summary.md", "protocol_clean.json", "protocol_pope.json"} <= \
        {p.name for p in tmp_path.iterdir()}
    assert "POPE (random, 9 images)" in (tmp_path / "summary.md").read_text()

    class Refuses(Oracle):
        def answer(self, *a, **kw):
            raise AssertionError("a finished protocol was run again")

    assert run_understanding(cfg, Refuses())["protocols"] == summary["protocols"]
    cfg.per_tag = 3
    with pytest.raises(InputError, match="per_tag=2, not 3"):
        run_understanding(cfg, Refuses())


def test_a_protocol_killed_mid_way_resumes_its_answers(tmp_path: Path) -> None:
    """The answers are kept as they come: after a crash in the third batch, the rerun asks only the
    questions without an answer, and the result equals an uninterrupted run's."""
    cfg = UnderstandingConfig(protocols=["clean"], per_tag=2, batch_size=4, out=str(tmp_path / "a"), progress=False)
    straight = run_understanding(cfg, _oracle_for_clean([2]))["protocols"]

    class Dies(Oracle):
        def answer(self, images, questions, **kw):
            if len(self.questions) >= 8:
                raise KeyboardInterrupt
            return super().answer(images, questions, **kw)

    cfg.out = str(tmp_path / "b")
    dies = Dies()
    dies.truth = _oracle_for_clean([2]).truth
    with pytest.raises(KeyboardInterrupt):
        run_understanding(cfg, dies)
    stored = list((tmp_path / "b" / "answers").glob("clean-*/clean_qa.jsonl"))
    assert len(stored) == 1 and len(stored[0].read_text().splitlines()) == 8
    again = _oracle_for_clean([2])
    assert run_understanding(cfg, again)["protocols"] == straight
    assert len(again.questions) == 12 - 8  # 6 tags x 2 scenes, 8 answered before the crash


# ---- generated images: UniRL's protocol, imbalance, POPE on detections ------------------------------

@pytest.fixture()
def generated(tmp_path: Path) -> tuple[Path, Path, Oracle]:
    """3 prompts x 2 rendered images in GenEval layout; GenEval verdicts [T, T], [T, F], [F, F]; the oracle
    answers every image right except image 1 of prompt 0."""
    from unirl_kit.eval.geneval.layout import write_prompt_folder
    from unirl_kit.generation.outputs import write_prompt_outputs
    from unirl_kit.prompts.generate import get_world, sample_prompt
    from unirl_kit.prompts.qa import question_answer
    from unirl_kit.worlds.shapes.render import render_scene

    images_dir, rng, oracle, rows = tmp_path / "images", np.random.default_rng(3), Oracle(), []
    verdicts = [[True, True], [True, False], [False, False]]
    for i, tag in enumerate(["single_object", "two_object", "counting"]):
        spec = sample_prompt(tag, get_world("shapes"), rng)
        write_prompt_folder(images_dir, i, spec.to_json())
        drawn = [render_scene(spec, rng, 64) for _ in range(2)]
        write_prompt_outputs(images_dir, i, [im for im, _ in drawn], torch.zeros(2, 4, dtype=torch.long),
                             torch.zeros(2, 4), [0, 1], {})
        for k, (im, placed) in enumerate(drawn):
            oracle.learn(im, question_answer(spec)[1], {p.cls for p in placed})
            details = {p.cls: [[*p.box, 1.0]] for p in placed}
            rows.append({"filename": f"/elsewhere/images/{i:05d}/samples/{k:04d}.png", "tag": tag,
                         "correct": verdicts[i][k], "metadata": json.dumps(spec.to_json()),
                         "details": json.dumps(details)})
            if (i, k) == (0, 1):
                oracle.wrong.add(_key(im))
    results = tmp_path / "geneval" / "results.jsonl"
    results.parent.mkdir()
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return images_dir, results, oracle


def test_geneval_correct_imbalance_and_pope_on_generated_images(generated, tmp_path: Path) -> None:
    images_dir, results, oracle = generated
    cfg = UnderstandingConfig(protocols=["geneval_correct", "imbalance", "pope"], images_dir=str(images_dir),
                              geneval_results=str(results.parent), pope=PopeOptions(n_images=0, source="generated"),
                              out=str(tmp_path / "out"), progress=False)
    s = run_understanding(cfg, oracle)["protocols"]
    gc = s["geneval_correct"]
    assert (gc["images"], gc["images_judged_correct"]) == (6, 3)
    assert gc["answered"] == {"single_object": 2, "two_object": 1}  # counting: no image judged correct
    assert gc["accuracy"] == {"single_object": 0.5, "two_object": 1.0} and gc["overall"] == 0.75
    # majority per prompt: gen [T, F, F]; und [T,F]->F, [T,T]->T, [T,T]->T
    im = s["imbalance"]
    assert im["counts"] == {"gen_right_und_wrong": 1, "und_right_gen_wrong": 2, "both_right": 0, "both_wrong": 0}
    assert im["imbalance"] == pytest.approx(1.0)
    assert sum(not q.startswith("Is there") for q in oracle.questions) == 6  # each image self-asked once
    assert s["pope"]["accuracy"] == 1.0 and s["pope"]["images"] == 6


def test_generated_inputs_are_checked(generated, tmp_path: Path) -> None:
    images_dir, results, oracle = generated
    cfg = UnderstandingConfig(protocols=["geneval_correct"], images_dir=str(images_dir), out=str(tmp_path / "o"))
    with pytest.raises(InputError, match="needs images_dir .* and geneval_results"):
        run_understanding(cfg, oracle)
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n")
    cfg.geneval_results = str(results)
    with pytest.raises(InputError, match=r"no row for 00002/samples/0001\.png"):
        run_understanding(cfg, oracle)
    cfg.protocols = ["clean", "pope_x"]
    with pytest.raises(InputError, match="did you mean 'pope'"):
        run_understanding(cfg, oracle)


# ---- CLI and the shipped model ------------------------------------------------------------------------

def test_cli_with_a_registered_fake_backbone(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unirl_kit.cli import app

    REGISTRIES["backbones"].register("fake-und", AlwaysYes)
    args = ["eval", "understanding", "--protocol", "clean", "-p", "pope", "--backbone", "fake-und",
            "--out", str(tmp_path), "per_tag=1", "pope.n_images=6", "progress=false"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "POPE" in result.output and "summary.json" in result.output
    pope = json.loads((tmp_path / "summary.json").read_text())["protocols"]["pope"]
    assert (pope["yes_ratio"], pope["recall"], pope["precision"], pope["accuracy"]) == (1.0, 1.0, 0.5, 0.5)
    bad = CliRunner().invoke(app, ["eval", "understanding", "-p", "pop", "--backbone", "fake-und", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "did you mean 'pope'" in bad.output


def test_cli_shortcuts_nested_keys_and_a_flat_config_of_earlier_versions(tmp_path: Path) -> None:
    """`--backbone/--model/--device` set backbone.name/.model/.device, beside backbone.* overrides; a config
    file with the flat keys of earlier versions (`backbone: NAME`, `model`, `dtype`) reads into the same place;
    the protocol files keep their flat fingerprint keys, so folders of earlier versions resume."""
    import yaml
    from typer.testing import CliRunner

    from unirl_kit.cli import app

    REGISTRIES["backbones"].register("fake-und", AlwaysYes)
    args = ["eval", "understanding", "-p", "clean", "--backbone", "fake-und", "--model", "M", "--device", "cpu",
            "--out", str(tmp_path / "a"), "per_tag=1", "backbone.dtype=float32", "progress=false"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["backbone"]
    assert (saved["name"], saved["model"], saved["device"], saved["dtype"]) == ("fake-und", "M", "cpu", "float32")
    fp = json.loads((tmp_path / "a" / "protocol_clean.json").read_text())["fingerprint"]
    assert (fp["backbone"], fp["model"], fp["backbone_options"], fp["dtype"]) == ("fake-und", "M", {}, "float32")

    old = tmp_path / "old.yaml"
    old.write_text("protocols: [clean]\nbackbone: fake-und\nmodel: M\ndtype: float32\nper_tag: 1\n")
    args = ["eval", "understanding", "--config", str(old), "--out", str(tmp_path / "a"), "progress=false"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # the same settings: the protocol is done
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*args, "backbone.model=N"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "made with model='M', not 'N'" in result.output


def test_shipped_tiny_shapes_on_clean_renders(tmp_path: Path) -> None:
    from unirl_kit.registry import registry

    backbone = registry("backbones").build("tiny-shapes", device="cpu")
    cfg = UnderstandingConfig(protocols=["clean"], per_tag=2, out=str(tmp_path), progress=False,
                              backbone=BackboneConfig(device="cpu", dtype="auto"))
    m = run_understanding(cfg, backbone)["protocols"]["clean"]
    assert set(m["accuracy"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(0.0 <= v <= 1.0 for v in [*m["accuracy"].values(), *m["credit"].values(), m["overall"]])
    saved = json.loads((tmp_path / "protocol_clean.json").read_text())
    assert len(saved["rows"]) == 12 and saved["fingerprint"]["model_stamp"]
