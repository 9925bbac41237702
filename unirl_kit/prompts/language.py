"""English as GenEval's prompt generator writes it (articles, plurals, number words)."""

from __future__ import annotations

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def with_article(name: str) -> str:
    """GenEval's rule: 'an' before a vowel letter, else 'a' (so 'a green skis', 'an orange')."""
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    """GenEval's rule: '+es' after a final s, else '+s' (so 'buses', but also 'benchs')."""
    return f"{name}es" if name.endswith("s") else f"{name}s"
