"""Prompt files for `unirl generate`: GenEval metadata JSONL, `unirl prompts` output, or plain text.

One prompt per non-blank line (UTF-8; a leading byte-order mark is dropped, so a JSONL saved by a
Windows editor is still read as JSONL); a line that is a JSON object is a metadata line (validated as GenEval
metadata and kept verbatim), any other line is a plain prompt (metadata `{"prompt": line}`). Plain
prompts generate fine but carry no GenEval requirements, so `eval geneval` cannot judge them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.prompts.schema import parse_spec
from unirl_kit.types import InputError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # no text prompt holds these; binary files do


def read_prompt_file(path: Path) -> list[dict[str, Any]]:
    """The metadata object of each prompt, in file order (index i -> folder OUT/<i:05d>)."""
    path = Path(path)
    label = f"--prompts {path}"
    rows: list[dict[str, Any]] = []
    for lineno, line in iter_lines(path, label):
        text = line.strip()
        if text.startswith("{"):
            obj = parse_json(text, f"{path}:{lineno}")
            parse_spec(obj, f"{path}:{lineno}")
            if not obj["prompt"].strip():
                raise InputError(f"{path}:{lineno}: field 'prompt' is empty; give the text to draw")
            rows.append(obj)
        elif (bad := _CONTROL.search(text)) is not None:
            raise InputError(f"{path}:{lineno}: control character {bad.group()!r} in a plain prompt; expected text "
                             "or JSON lines (is this a binary file?)")
        else:
            rows.append({"prompt": text})
    if not rows:
        raise InputError(f"{label}: no prompts (the file is empty); give one prompt a line, "
                         "or a GenEval metadata JSONL such as `unirl prompts` writes")
    return rows
