"""Prompt files for `unirl generate`: GenEval metadata JSONL, `unirl prompts` output, plain text, or a
parquet file / HF `datasets` folder with the JSONL's fields (rows from `prompts.sources`).

One prompt per non-blank line (UTF-8; a leading byte-order mark is dropped, so a JSONL saved by a
Windows editor is still read as JSONL); a line that is a JSON object is a metadata line (validated as GenEval
metadata and kept verbatim), any other line is a plain prompt (metadata `{"prompt": line}`). Plain
prompts generate fine but carry no GenEval requirements, so `eval geneval` cannot judge them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unirl_kit.prompts.schema import parse_spec
from unirl_kit.prompts.sources import iter_prompt_rows
from unirl_kit.types import InputError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # no text prompt holds these; binary files do


def read_prompt_file(path: Path) -> list[dict[str, Any]]:
    """The metadata object of each prompt, in file order (index i -> folder OUT/<i:05d>)."""
    path = Path(path)
    label = f"--prompts {path}"
    rows: list[dict[str, Any]] = []
    for where, row in iter_prompt_rows(path, label, text_lines=True):
        if not isinstance(row, str):
            parse_spec(row, where)
            if not row["prompt"].strip():
                raise InputError(f"{where}: field 'prompt' is empty; give the text to draw")
            rows.append(row)
        elif (bad := _CONTROL.search(row)) is not None:
            raise InputError(f"{where}: control character {bad.group()!r} in a plain prompt; expected text "
                             "or JSON lines (is this a binary file?)")
        else:
            rows.append({"prompt": row})
    if not rows:
        raise InputError(f"{label}: no prompts (the file is empty); give one prompt a line, "
                         "or a GenEval metadata JSONL such as `unirl prompts` writes (or parquet / a datasets folder)")
    return rows
