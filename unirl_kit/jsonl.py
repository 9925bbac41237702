"""Append-only JSONL that survives kills: every long job writes rows as it goes and resumes from them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from unirl_kit.types import InputError


class ResumableJsonl:
    """Rows keyed by `key(row)`; a torn last line (killed mid-write) is dropped on open."""

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], str]):
        self.path = Path(path)
        self.key = key
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self._load()
        self.done = {key(r) for r in self.rows}

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        good: list[str] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
                good.append(line)
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise InputError(f"{self.path}:{i + 1}: corrupt row in the middle of the file; "
                                     "move the file away to start over") from None
        if text and (not text.endswith("\n") or len(good) != sum(1 for ln in lines if ln.strip())):
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            tmp.replace(self.path)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = [r for r in rows if self.key(r) not in self.done]
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(rows)
        self.done.update(self.key(r) for r in rows)


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
