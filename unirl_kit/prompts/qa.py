"""UniRL's question and ground-truth answer for a prompt, in one of two wordings.

- `unirl`: the authors' QA file, word for word (../shared/docs/unirl.md). No question names an object,
  so an answer earns the object checks only by naming them from the image.
- `named`: the position and colour-attribution questions name the two objects ("Where is the {a}
  relative to the {b}?"). An answer then gets the object checks from the question alone; the shipped
  tiny-shapes (v1-v5) was pre-trained on this wording and reads no other (its vocabulary lacks the
  authors' words), so it stays the default until a model pre-trained on both ships (issue 20).
The graded credit (`prompts/answers.py`) is the same for both: right objects, count, colour, relation.
"""

from __future__ import annotations

from typing import Literal

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural, with_article
from unirl_kit.types import InputError, PromptSpec

QuestionStyle = Literal["named", "unirl"]  # the keys of QUESTION_STYLES
QUESTION_STYLES: dict[str, dict[str, str]] = {
    "named": {
        "single_object": "What is the main item in this image?",
        "counting": "How many items in this image?",
        "colors": "What is the color of the object?",
        "two_object": "What are the two items in this image?",
        "position": "Where is the {a} relative to the {b}?",
        "color_attr": "What are the colors of the {a} and the {b}?",
    },
    "unirl": {
        "single_object": "What is the main item in this image?",
        "counting": "How many items in this image?",
        "colors": "What is the color of the object?",
        "two_object": "What are two items in this image?",
        "position": "What are two objects and What is position relationship between two main items? Use one sentence.",
        "color_attr": "What are two objects and the colors of two objects in the image? Use one sentence",
    },
}
DEFAULT_STYLE = "named"
QUESTIONS = QUESTION_STYLES[DEFAULT_STYLE]


def check_style(style: str) -> None:
    if style not in QUESTION_STYLES:
        raise InputError(f"question_style: {style!r} is not one of {', '.join(QUESTION_STYLES)}")


def style_of(spec: PromptSpec) -> str:
    """The wording of a spec's own question: the authors' when it is theirs, else `named`."""
    return "unirl" if spec.question is not None and spec.question == QUESTION_STYLES["unirl"].get(spec.tag) else "named"


def question_answer(spec: PromptSpec, style: str = DEFAULT_STYLE) -> tuple[str, str]:
    """(question, answer) for one of GenEval's six tags, in `style`'s wording."""
    check_style(style)
    questions = QUESTION_STYLES[style]
    inc = spec.include
    if spec.tag == "single_object":
        return questions["single_object"], inc[0].cls
    if spec.tag == "counting":
        return questions["counting"], f"{NUMBER_WORDS[inc[0].count]} {make_plural(inc[0].cls)}"
    if spec.tag == "colors":
        return questions["colors"], str(inc[0].color)
    if spec.tag == "two_object":
        both = f"{with_article(inc[0].cls)} and {with_article(inc[1].cls)}"
        return questions["two_object"], f"There is {both}" if style == "unirl" else both
    if spec.tag == "position":
        ref, obj = inc[0], inc[1]
        relation = obj.position[0] if obj.position else "near"
        return (questions["position"].format(a=obj.cls, b=ref.cls),
                f"The {obj.cls} is {relation} the {ref.cls}.")
    if spec.tag == "color_attr":
        a, b = inc[0], inc[1]
        return (questions["color_attr"].format(a=a.cls, b=b.cls),
                f"The {a.cls} is {a.color} and the {b.cls} is {b.color}.")
    raise ValueError(f"no UniRL question template for tag {spec.tag!r}")


def question_and_truth(spec: PromptSpec) -> tuple[str, str]:
    """The metadata's own question/answer, or the templates' where the line has none (plain GenEval files)."""
    if spec.question is not None and spec.answer is not None:
        return spec.question, spec.answer
    question, truth = question_answer(spec)
    return spec.question or question, spec.answer or truth
