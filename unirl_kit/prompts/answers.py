"""Grade a free-text answer against a prompt's ground truth, with UniRL's graded credit.

The paper's example: prompt "four bowls", answer "two chairs" -> 0, "three bowls" -> right object
(+1), "four bowls" -> right object and count (+2). Here each tag has a list of checks (object,
count, colour, relation, one per required object where it applies); the credit is the share that
pass, so full marks (1.0) only when every check passes. Parsing is forgiving of what a model may
write: numerals or number words, singular or plural, articles, upper case, punctuation, and either
word order of a relation ("the A is left of the B" is the same fact as "the B is right of the A").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural
from unirl_kit.types import GENEVAL_COLORS, RELATIONS, PromptSpec

_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"a": 1, "an": 1, "single": 1, "pair": 2}
_CLAUSE = re.compile(r"\band\b|\bwhile\b|\bwhereas\b|\bbut\b")


@dataclass(frozen=True)
class Grade:
    score: float  # share of checks passed, in [0, 1]
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def normalize(text: str) -> str:
    """Lower case, clause marks (, ;) to 'and', other punctuation to spaces: 'The Dog; a-b.' -> 'the dog and a b'."""
    text = re.sub(r"[,;]", " and ", text.lower())
    text = re.sub(r"[^a-z0-9 ]+", " ", text.replace("-", " "))
    return " ".join(text.split())


def _name_pattern(name: str) -> re.Pattern:
    forms = sorted({name, make_plural(name), name + "s", name + "es"}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(normalize(f)) for f in forms) + r")\b")


def mentions(text: str, name: str) -> list[int]:
    """Character offsets where `name` (singular or plural) occurs in normalized `text`."""
    return [m.start() for m in _name_pattern(name).finditer(text)]


def count_before(text: str, offset: int) -> int | None:
    """The number written just before an object mention (within two words: 'three red bowls')."""
    words = text[:offset].split()[-3:]
    for word in reversed(words):
        if word.isdigit():
            return int(word)
        if word in _NUMBERS:
            return _NUMBERS[word]
    return None


def colors_in(text: str) -> list[str]:
    """Colour words in order of appearance."""
    found = [(m.start(), c) for c in GENEVAL_COLORS for m in re.finditer(rf"\b{c}\b", text)]
    return [c for _, c in sorted(found)]


def color_of(text: str, name: str) -> str | None:
    """The colour said of `name`: within the clause that mentions it ('the dog is brown and ...')."""
    for clause in _CLAUSE.split(text):
        if mentions(clause, name):
            colors = colors_in(clause)
            if colors:
                return colors[0]
    return None


def relation_of(text: str, subject: str, reference: str) -> str | None:
    """The relation stated of subject to reference, whichever of the two the sentence starts with."""
    for clause in _CLAUSE.split(text):
        a, b = mentions(clause, subject), mentions(clause, reference)
        if not a or not b or a[0] == b[0]:
            continue
        stated = [r for r in RELATIONS if re.search(rf"\b{r}\b", clause)]
        if not stated:
            continue
        relation = max(stated, key=len)  # 'left of' beats a stray 'of'
        return relation if a[0] < b[0] else _INVERSE[relation]
    return None


def grade_answer(spec: PromptSpec, answer: str) -> Grade:
    """Graded credit of `answer` for the question UniRL asks about `spec` (see module docstring)."""
    text = normalize(answer)
    inc = spec.include
    checks: dict[str, bool] = {}
    if spec.tag in ("single_object", "two_object"):
        for req in inc:
            checks[f"object:{req.cls}"] = bool(mentions(text, req.cls))
    elif spec.tag == "counting":
        where = mentions(text, inc[0].cls)
        checks["object"] = bool(where)
        numbers = [count_before(text, w) for w in where] or [_lone_number(text)]
        checks["count"] = inc[0].count in numbers
    elif spec.tag == "colors":
        colors = colors_in(text)
        checks["color"] = bool(colors) and colors[0] == inc[0].color
    elif spec.tag == "position":
        ref, obj = inc[0], inc[1]
        checks[f"object:{obj.cls}"] = bool(mentions(text, obj.cls))
        checks[f"object:{ref.cls}"] = bool(mentions(text, ref.cls))
        expected = obj.position[0] if obj.position else None
        checks["relation"] = expected is not None and relation_of(text, obj.cls, ref.cls) == expected
    elif spec.tag == "color_attr":
        for req in inc:
            checks[f"color:{req.cls}"] = color_of(text, req.cls) == req.color
    else:
        raise ValueError(f"no grading rule for tag {spec.tag!r}")
    return Grade(sum(checks.values()) / len(checks), checks)


def _lone_number(text: str) -> int | None:
    for word in text.split():
        if word.isdigit():
            return int(word)
        if word in NUMBER_WORDS:
            return NUMBER_WORDS.index(word)
    return None
