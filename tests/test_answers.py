"""Graded answer credit: the paper's example, forgiving parsing, relation word order, every tag."""

import numpy as np
import pytest

from unirl_kit.prompts.answers import color_of, grade_answer, normalize, relation_of
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.prompts.qa import question_answer
from unirl_kit.types import GENEVAL_TAGS, PromptSpec, Requirement

BOWLS = PromptSpec("counting", "a photo of four bowls", (Requirement("bowl", 4),))


@pytest.mark.parametrize(("answer", "score"), [
    ("two chairs", 0.0), ("three bowls", 0.5), ("four bowls", 1.0), ("4 Bowls.", 1.0),
    ("There are four bowls in the image", 1.0), ("a bowl", 0.5), ("", 0.0),
])
def test_paper_example_counting(answer, score):
    assert grade_answer(BOWLS, answer).score == score


def test_ground_truth_answers_get_full_marks_for_every_tag():
    world, rng = get_world("shapes"), np.random.default_rng(3)
    for i in range(240):
        spec = sample_prompt(GENEVAL_TAGS[i % 6], world, rng)
        _, truth = question_answer(spec)
        grade = grade_answer(spec, truth)
        assert grade.correct and grade.score == 1.0, (spec.prompt, truth, grade)


POSITION = PromptSpec("position", "a photo of a dog right of a teddy bear",
                      (Requirement("teddy bear", 1), Requirement("dog", 1, position=("right of", 0))))


@pytest.mark.parametrize(("answer", "relation_ok"), [
    ("The dog is right of the teddy bear.", True),
    ("the teddy bear is left of the dog", True),  # the same fact, the other word order
    ("The dog is left of the teddy bear.", False),
    ("The teddy bear is right of the dog.", False),
    ("The dog is above the teddy bear.", False),
])
def test_relation_either_word_order(answer, relation_ok):
    grade = grade_answer(POSITION, answer)
    assert grade.checks["relation"] is relation_ok
    assert grade.checks["object:dog"] and grade.checks["object:teddy bear"]


def test_color_attr_pairs_colours_with_their_objects():
    spec = PromptSpec("color_attr", "a photo of a red cup and a blue car",
                      (Requirement("cup", 1, color="red"), Requirement("car", 1, color="blue")))
    assert grade_answer(spec, "The cup is red and the car is blue.").score == 1.0
    assert grade_answer(spec, "a blue car and a red cup").score == 1.0
    assert grade_answer(spec, "The cup is blue and the car is red.").score == 0.0
    assert grade_answer(spec, "The cup is red and the car is green.").score == 0.5
    assert color_of(normalize("the cup is red, the car is blue"), "car") == "blue"


def test_colors_takes_the_first_colour_named():
    spec = PromptSpec("colors", "a photo of a green bench", (Requirement("bench", 1, color="green"),))
    assert grade_answer(spec, "Green.").correct
    assert not grade_answer(spec, "red").correct
    assert not grade_answer(spec, "nothing").correct


def test_single_and_two_object_plurals_articles_case():
    spec = PromptSpec("two_object", "a photo of a bus and an apple", (Requirement("bus", 1), Requirement("apple", 1)))
    assert grade_answer(spec, "An Apple and a BUS.").correct
    assert grade_answer(spec, "buses and apples").correct
    assert grade_answer(spec, "a bus").score == 0.5
    single = PromptSpec("single_object", "a photo of a cat", (Requirement("cat", 1),))
    assert grade_answer(single, "cat").correct and not grade_answer(single, "catfish").correct


def test_relation_needs_both_objects_in_one_clause():
    assert relation_of(normalize("the dog is left of the cat"), "dog", "cat") == "left of"
    assert relation_of(normalize("the dog, and the cat is above"), "dog", "cat") is None


def test_unknown_tag_is_an_error():
    with pytest.raises(ValueError, match="no grading rule"):
        grade_answer(PromptSpec("weird", "x", (Requirement("cat", 1),)), "cat")
