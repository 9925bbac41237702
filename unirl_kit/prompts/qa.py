"""UniRL's question and ground-truth answer for a prompt (templates of the authors' QA file)."""

from __future__ import annotations

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural, with_article
from unirl_kit.types import PromptSpec

QUESTIONS = {
    "single_object": "What is the main item in this image?",
    "counting": "How many items in this image?",
    "colors": "What is the color of the object?",
    "two_object": "What are the two items in this image?",
    "position": "Where is the {a} relative to the {b}?",
    "color_attr": "What are the colors of the {a} and the {b}?",
}


def question_answer(spec: PromptSpec) -> tuple[str, str]:
    """(question, answer) for one of GenEval's six tags."""
    inc = spec.include
    if spec.tag == "single_object":
        return QUESTIONS["single_object"], inc[0].cls
    if spec.tag == "counting":
        return QUESTIONS["counting"], f"{NUMBER_WORDS[inc[0].count]} {make_plural(inc[0].cls)}"
    if spec.tag == "colors":
        return QUESTIONS["colors"], str(inc[0].color)
    if spec.tag == "two_object":
        return QUESTIONS["two_object"], f"{with_article(inc[0].cls)} and {with_article(inc[1].cls)}"
    if spec.tag == "position":
        ref, obj = inc[0], inc[1]
        relation = obj.position[0] if obj.position else "near"
        return (QUESTIONS["position"].format(a=obj.cls, b=ref.cls),
                f"The {obj.cls} is {relation} the {ref.cls}.")
    if spec.tag == "color_attr":
        a, b = inc[0], inc[1]
        return (QUESTIONS["color_attr"].format(a=a.cls, b=b.cls),
                f"The {a.cls} is {a.color} and the {b.cls} is {b.color}.")
    raise ValueError(f"no UniRL question template for tag {spec.tag!r}")


def question_and_truth(spec: PromptSpec) -> tuple[str, str]:
    """The metadata's own question/answer, or the templates' where the line has none (plain GenEval files)."""
    if spec.question is not None and spec.answer is not None:
        return spec.question, spec.answer
    question, truth = question_answer(spec)
    return spec.question or question, spec.answer or truth
