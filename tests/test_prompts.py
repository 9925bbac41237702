"""Prompt sets: GenEval's English (articles, plurals), the official file rebuilt from its metadata,
`generate_prompts` sampling rules, UniRL question/answer templates, `unirl prompts` and parse errors."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import yaml

import unirl_kit
from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
from unirl_kit.prompts.generate import generate_prompts, get_world, tag_capacity
from unirl_kit.prompts.language import NUMBER_WORDS, make_plural, with_article
from unirl_kit.prompts.qa import QUESTIONS, question_answer
from unirl_kit.prompts.schema import parse_spec, read_prompts
from unirl_kit.types import GENEVAL_COLORS, GENEVAL_TAGS, RELATIONS, InputError

# ---------------------------------------------------------------- GenEval's English


def test_with_article_follows_geneval_letter_rule():
    assert with_article("apple") == "an apple"
    assert with_article("orange") == "an orange"
    assert with_article("umbrella") == "an umbrella"
    assert with_article("hourglass") == "a hourglass"  # a letter rule, not a sound rule
    assert with_article("green") == "a green"
    assert with_article("elephant") == "an elephant"


def test_make_plural_follows_geneval_rule():
    assert make_plural("clock") == "clocks"
    assert make_plural("bus") == "buses"
    assert make_plural("skis") == "skises"
    assert make_plural("bench") == "benchs"  # GenEval's own spelling
    assert make_plural("wine glass") == "wine glasses"


def rebuild(row: dict) -> str:
    """GenEval's templates, written out from a metadata line."""
    tag, inc = row["tag"], row["include"]
    if tag == "single_object":
        body = with_article(inc[0]["class"])
    elif tag == "two_object":
        body = f"{with_article(inc[0]['class'])} and {with_article(inc[1]['class'])}"
    elif tag == "counting":
        body = f"{NUMBER_WORDS[inc[0]['count']]} {make_plural(inc[0]['class'])}"
    elif tag == "colors":
        body = f"{with_article(inc[0]['color'])} {inc[0]['class']}"
    elif tag == "position":
        # include[1] is A (the object), include[0] is B (the reference)
        body = f"{with_article(inc[1]['class'])} {inc[1]['position'][0]} {with_article(inc[0]['class'])}"
    elif tag == "color_attr":
        body = (f"{with_article(inc[0]['color'])} {inc[0]['class']} and "
                f"{with_article(inc[1]['color'])} {inc[1]['class']}")
    else:
        raise AssertionError(f"unexpected tag {tag}")
    return f"a photo of {body}"


def test_every_official_prompt_is_rebuilt_from_its_metadata(official_rows):
    assert len(official_rows) == 553
    wrong = [(r["prompt"], rebuild(r)) for r in official_rows if rebuild(r) != r["prompt"]]
    assert wrong == []
    assert Counter(r["tag"] for r in official_rows) == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}


def test_official_lines_parse_and_round_trip_verbatim(official_rows):
    for i, row in enumerate(official_rows, 1):
        spec = parse_spec(row, f"evaluation_metadata.jsonl:{i}")
        assert json.dumps(spec.to_json()) == json.dumps(row)  # same keys, same order


def test_official_file_reads_with_read_prompts(official_rows, official_metadata_file):
    specs = read_prompts(official_metadata_file)
    assert [s.prompt for s in specs] == [r["prompt"] for r in official_rows]


def test_packaged_coco_names_match_official(official_names):
    w = get_world("coco")
    assert list(w.classes) == official_names
    assert w.colors == GENEVAL_COLORS
    assert w.colorless == frozenset({"person"})


# ---------------------------------------------------------------- question / answer


def check_qa(spec) -> None:
    """The QA templates of docs/unirl.md / qa.py for one spec."""
    q, a = question_answer(spec)
    inc = spec.include
    if spec.tag == "single_object":
        assert (q, a) == ("What is the main item in this image?", inc[0].cls)
    elif spec.tag == "counting":
        assert q == "How many items in this image?"
        assert a == f"{NUMBER_WORDS[inc[0].count]} {make_plural(inc[0].cls)}"
    elif spec.tag == "colors":
        assert (q, a) == ("What is the color of the object?", inc[0].color)
    elif spec.tag == "two_object":
        assert q == QUESTIONS["two_object"]
        assert a == f"{with_article(inc[0].cls)} and {with_article(inc[1].cls)}"
    elif spec.tag == "position":
        assert q == f"Where is the {inc[1].cls} relative to the {inc[0].cls}?"
        assert a == f"The {inc[1].cls} is {inc[1].position[0]} the {inc[0].cls}."
    elif spec.tag == "color_attr":
        assert q == f"What are the colors of the {inc[0].cls} and the {inc[1].cls}?"
        assert a == f"The {inc[0].cls} is {inc[0].color} and the {inc[1].cls} is {inc[1].color}."
    else:
        raise AssertionError(spec.tag)


def test_qa_matches_the_papers_examples(official_rows):
    by_prompt = {r["prompt"]: parse_spec(r, "official") for r in official_rows}
    assert question_answer(by_prompt["a photo of a bench"]) == ("What is the main item in this image?", "bench")
    assert question_answer(by_prompt["a photo of two clocks"]) == ("How many items in this image?", "two clocks")
    q, a = question_answer(by_prompt["a photo of a dog right of a teddy bear"])
    assert a.rstrip(".") == "The dog is right of the teddy bear"
    colors = next(s for s in by_prompt.values() if s.tag == "colors")
    assert question_answer(colors) == ("What is the color of the object?", colors.include[0].color)


def test_qa_templates_on_every_official_prompt(official_rows):
    for i, row in enumerate(official_rows):
        check_qa(parse_spec(row, f"official:{i}"))


def test_generated_prompts_carry_their_qa():
    for spec in generate_prompts("shapes", 60, 1):
        assert (spec.question, spec.answer) == question_answer(spec)
        check_qa(spec)


# ---------------------------------------------------------------- generate_prompts


def check_spec_rules(spec, world) -> None:
    """GenEval's sampling rules for one generated spec."""
    inc, exc = spec.include, spec.exclude
    assert all(r.cls in world.classes for r in (*inc, *exc))
    assert all(r.color is None or r.color in world.colors for r in inc)
    assert spec.prompt == rebuild(spec.to_json())
    if spec.tag == "single_object":
        assert len(inc) == 1 and inc[0].count == 1 and not exc
    elif spec.tag == "two_object":
        assert len(inc) == 2 and inc[0].cls != inc[1].cls and not exc
    elif spec.tag == "counting":
        (req,) = inc
        assert 2 <= req.count <= 4 and req.color is None
        assert [(e.cls, e.count) for e in exc] == [(req.cls, req.count + 1)]
    elif spec.tag == "colors":
        assert len(inc) == 1 and inc[0].color is not None and inc[0].cls not in world.colorless
    elif spec.tag == "position":
        assert len(inc) == 2 and inc[0].cls != inc[1].cls
        assert inc[0].position is None
        assert inc[1].position is not None and inc[1].position[1] == 0 and inc[1].position[0] in RELATIONS
    elif spec.tag == "color_attr":
        assert len(inc) == 2 and inc[0].cls != inc[1].cls and inc[0].color != inc[1].color
        assert inc[0].color is not None and inc[1].color is not None
        assert not ({inc[0].cls, inc[1].cls} & world.colorless)
    else:
        raise AssertionError(spec.tag)


def check_even_spread(specs, world, n) -> None:
    counts = Counter(s.tag for s in specs)
    caps = {t: tag_capacity(t, world) for t in GENEVAL_TAGS}
    assert len(specs) == min(n, sum(caps.values()))
    open_tags = [t for t in GENEVAL_TAGS if counts[t] < caps[t]]
    full = [t for t in GENEVAL_TAGS if counts[t] == caps[t]]
    assert sorted(open_tags + full) == sorted(GENEVAL_TAGS)
    if open_tags:
        assert max(counts[t] for t in open_tags) - min(counts[t] for t in open_tags) <= 1
        assert all(counts[t] <= min(counts[o] for o in open_tags) for t in full)


@pytest.mark.parametrize(("world", "n"), [("shapes", 12), ("shapes", 120), ("coco", 120), ("coco", 600)])
def test_generated_sets_follow_geneval_rules(world, n):
    w = get_world(world)
    specs = generate_prompts(world, n, 0)
    check_even_spread(specs, w, n)
    assert len({s.prompt for s in specs}) == len(specs)
    for spec in specs:
        check_spec_rules(spec, w)
    if n % 6 == 0 and n // 6 <= min(tag_capacity(t, w) for t in GENEVAL_TAGS):
        assert Counter(s.tag for s in specs) == {t: n // 6 for t in GENEVAL_TAGS}


def test_shapes_small_tags_give_all_their_prompts():
    w = get_world("shapes")
    specs = generate_prompts("shapes", 120, 0)
    counts = Counter(s.tag for s in specs)
    assert counts["single_object"] == tag_capacity("single_object", w) == len(w.classes)
    assert {s.prompt for s in specs if s.tag == "single_object"} == {f"a photo of {with_article(c)}"
                                                                     for c in w.classes}


def test_coco_never_colours_person():
    specs = generate_prompts("coco", 1200, 0, tags=("colors", "color_attr"))
    assert len(specs) == 1200
    coloured = [r.cls for s in specs for r in s.include if r.color is not None]
    assert len(coloured) == 600 + 2 * 600
    assert "person" not in coloured
    # 'person' is still a class for the uncoloured tags
    others = generate_prompts("coco", 600, 0, tags=("single_object", "two_object", "position"))
    assert "person" in {r.cls for s in others for r in s.include}


def test_same_seed_same_set_other_seed_other_set():
    a = [s.to_json() for s in generate_prompts("coco", 60, 7)]
    assert a == [s.to_json() for s in generate_prompts("coco", 60, 7)]
    assert a != [s.to_json() for s in generate_prompts("coco", 60, 8)]


def test_same_seed_same_file(tmp_path):
    run_prompts(PromptsConfig(n=30, seed=5, out=str(tmp_path / "a.jsonl")))
    run_prompts(PromptsConfig(n=30, seed=5, out=str(tmp_path / "b.jsonl")))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


@pytest.mark.parametrize("world", ["shapes", "coco"])
def test_exclude_removes_overlaps(tmp_path, world):
    first = tmp_path / "train.jsonl"
    second = tmp_path / "eval.jsonl"
    a = run_prompts(PromptsConfig(world=world, n=60, seed=0, out=str(first)))
    # the same seed would give the same set again: only the exclusion can make them disjoint
    b = run_prompts(PromptsConfig(world=world, n=60, seed=0, exclude=str(first), out=str(second)))
    pa, pb = {s.prompt for s in a}, {s.prompt for s in read_prompts(second)}
    assert pa.isdisjoint(pb)
    assert len(pb) == len(b) == 60  # quotas move to tags with prompts left
    for spec in b:
        check_spec_rules(spec, get_world(world))


def test_unknown_world_is_an_input_error():
    with pytest.raises(InputError, match="unknown world 'shape'"):
        generate_prompts("shape", 6, 0)


# ---------------------------------------------------------------- `unirl prompts` CLI


def test_cli_writes_prompts_config_and_versions(tmp_path, unirl_cli):
    out = tmp_path / "sets" / "X.jsonl"
    proc = unirl_cli("prompts", "--n", "12", "--seed", "3", "--out", out)
    assert "12 prompts" in proc.stdout
    specs = read_prompts(out)
    assert len(specs) == 12
    assert [s.to_json() for s in specs] == [s.to_json() for s in generate_prompts("shapes", 12, 3)]
    config = yaml.safe_load((out.parent / "X.config.yaml").read_text())
    assert config["command"] == "prompts"
    assert config["n"] == 12 and config["seed"] == 3 and config["world"] == "shapes"
    versions = json.loads((out.parent / "X.versions.json").read_text())
    for key in ("python", "torch", "transformers", "unirl-kit"):
        assert key in versions
    for dist in ("torch", "transformers", "unirl-kit"):
        assert versions[dist] != "not installed"
    assert versions["unirl-kit"] == unirl_kit.__version__
    assert re.fullmatch(r"3\.\d+\.\d+\S*", versions["python"])


def test_cli_reports_bad_exclude_file_in_one_line(tmp_path, unirl_cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"}\n'
                   "{not json\n")
    proc = unirl_cli("prompts", "--n", "6", "--exclude", bad, "--out", tmp_path / "p.jsonl", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{bad}:2" in lines[0] and "malformed JSON" in lines[0]


# ---------------------------------------------------------------- parse errors name file:line and field

GOOD = {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"}


def write_lines(path, *objs) -> None:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))


def read_error(path) -> str:
    with pytest.raises(InputError) as info:
        read_prompts(path)
    return str(info.value)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, GOOD, "", '{"tag": "colors", "prompt": ')
    msg = read_error(path)
    assert msg.startswith(f"{path}:3:")
    assert "malformed JSON" in msg


def test_missing_include_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, GOOD, {"tag": "single_object", "prompt": "a photo of a cow"})
    msg = read_error(path)
    assert msg.startswith(f"{path}:2")
    assert "'include'" in msg


@pytest.mark.parametrize("count", [0, -1, "2", 1.5, True, None])
def test_bad_count_names_file_line_and_field(tmp_path, count):
    path = tmp_path / "p.jsonl"
    write_lines(path, {"tag": "counting", "include": [{"class": "cow", "count": count}], "prompt": "x"})
    msg = read_error(path)
    assert msg.startswith(f"{path}:1 include[0]")
    assert "'count'" in msg


@pytest.mark.parametrize("include", [
    [{"class": "cow", "count": 1, "position": ["above", 1]}, {"class": "dog", "count": 1}],  # forward
    [{"class": "cow", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 1]}],  # itself
    [{"class": "cow", "count": 1}, {"class": "dog", "count": 1, "position": ["near", 0]}],  # bad relation
])
def test_bad_position_names_file_line_and_field(tmp_path, include):
    path = tmp_path / "p.jsonl"
    write_lines(path, GOOD, {"tag": "position", "include": include, "prompt": "x"})
    msg = read_error(path)
    index = next(i for i, r in enumerate(include) if "position" in r)
    assert msg.startswith(f"{path}:2 include[{index}]")
    assert "'position'" in msg


def test_position_in_exclude_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, {**GOOD, "exclude": [{"class": "cow", "count": 2, "position": ["above", 0]}]})
    msg = read_error(path)
    assert msg.startswith(f"{path}:1 exclude[0]") and "'position'" in msg
