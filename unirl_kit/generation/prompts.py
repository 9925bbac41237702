"""Prompt files for `unirl generate`: GenEval metadata JSONL, `unirl prompts` output, or plain text.

One prompt per non-blank line; a line that is a JSON object is a metadata line (validated as GenEval
metadata and kept verbatim), any other line is a plain prompt (metadata `{"prompt": line}`). Plain
prompts generate fine but carry no GenEval requirements, so `eval geneval` cannot judge them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unirl_kit.prompts.schema import parse_spec
from unirl_kit.types import InputError


def read_prompt_file(path: Path) -> list[dict[str, Any]]:
    """The metadata object of each prompt, in file order (index i -> folder OUT/<i:05d>)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompts {path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"--prompts {path}: not UTF-8 text; give a JSONL or text file, one prompt a line") from None
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            parse_spec(obj, f"{path}:{lineno}")
            if not obj["prompt"].strip():
                raise InputError(f"{path}:{lineno}: field 'prompt' is empty; give the text to draw")
            rows.append(obj)
        else:
            rows.append({"prompt": text})
    if not rows:
        raise InputError(f"--prompts {path}: no prompts (the file is empty); give one prompt a line, "
                         "or a GenEval metadata JSONL such as `unirl prompts` writes")
    return rows
