"""JSON and JSONL files: one reader for every file a user hands in, and append-only JSONL that survives kills.

Every JSONL the toolkit reads (prompts, metadata, VQA, detections, results, scores) goes through
`iter_lines` (or `read_text`) and `parse_json`, so a bad file is one `InputError` naming the file and line whatever is
wrong with it: not UTF-8, a folder, unreadable, malformed JSON, JSON nested deeper than any format
here needs (deep nesting would otherwise end in Python's RecursionError), an integer past Python's
4300-digit conversion limit. A leading UTF-8 byte-order mark (Windows editors write one) is dropped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from unirl_kit.types import InputError

# Far deeper than any format here needs (a metadata line nests 4 levels; the reward server's request 7)
# and far below Python's recursion limit, so nothing reading a parsed value can recurse out of stack.
MAX_JSON_DEPTH = 32
_BOM = "\ufeff"


def _open(path: Path, label: str) -> BinaryIO:
    """The file opened for reading in binary, or one InputError naming it: missing, a folder, a device
    or pipe (reading one could block forever), unreadable."""
    if path.is_dir():
        raise InputError(f"{label}: is a folder; expected a file")
    if path.exists() and not path.is_file():
        raise InputError(f"{label}: not a regular file; expected a text file")
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{label}: file not found") from None
    except NotADirectoryError:
        raise InputError(f"{label}: file not found (a parent of it is a file, not a folder)") from None
    except PermissionError:
        raise InputError(f"{label}: permission denied reading it") from None
    except IsADirectoryError:  # a race with the check above
        raise InputError(f"{label}: is a folder; expected a file") from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None


def _decode(data: bytes, label: str, first_line: int) -> str:
    """UTF-8 bytes as text, or one InputError naming the line and byte that are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        raise InputError(f"{label}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def read_text(path: Path, label: str | None = None) -> str:
    """The UTF-8 text of a whole file, a leading BOM dropped, or one InputError naming the file
    (`label`, default the path) and the fault."""
    label = label or str(path)
    with _open(Path(path), label) as fh:
        text = _decode(fh.read(), label, 1)
    return text[1:] if text.startswith(_BOM) else text


def iter_lines(path: Path, label: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, read one line at a time (a large scores file never
    sits in memory); split at newlines only, as JSONL is (`str.splitlines` also splits at U+2028 or a
    form feed inside a JSON string); a leading BOM dropped."""
    label = label or str(path)
    with _open(Path(path), label) as fh:
        for n, raw in enumerate(fh, 1):
            line = _decode(raw, label, n).rstrip("\r\n")
            if n == 1 and line.startswith(_BOM):
                line = line[1:]
            if line.strip():
                yield n, line


def _bounded_int(text: str) -> int:
    """json's parse_int for the strict mode: 64-bit integers only (a token id or an index never needs
    more; a 100,000-digit number costs quadratic time and fails in Python's int conversion)."""
    if len(text.lstrip("-")) <= 19:
        value = int(text)
        if -2**63 <= value < 2**63:
            return value
    raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} ({len(text)} characters) "
                     "is outside the 64-bit range")


def _finite_float(text: str) -> float:
    """json's parse_float for the strict mode: 1e999 would become inf."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    """json's parse_constant for the strict mode: NaN and Infinity are not JSON (Python accepts them)."""
    raise ValueError(f"{name} is not valid JSON")


_STRICT = {"parse_int": _bounded_int, "parse_float": _finite_float, "parse_constant": _no_constant}


def _too_deep(obj: dict | list, limit: int) -> bool:
    """Whether arrays/objects nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(text: str | bytes | bytearray, where: str, max_depth: int = MAX_JSON_DEPTH,
               strict: bool = False) -> Any:
    """One JSON value, or one InputError starting with `where` (e.g. "file:line"): malformed, not
    UTF-8 (bytes), nested deeper than `max_depth`, or an integer Python cannot convert. `strict` (what
    the reward server takes from the network) also refuses integers beyond 64 bits and NaN/Infinity."""
    try:
        value = json.loads(text, **(_STRICT if strict else {}))
    except RecursionError:
        raise InputError(f"{where}: JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # UnicodeDecodeError, the int conversion limit, the strict hooks' refusals
        raise InputError(f"{where}: malformed JSON ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(value, dict | list) and _too_deep(value, max_depth):
        raise InputError(f"{where}: JSON nested deeper than {max_depth} levels")
    return value


def read_json(path: Path, label: str | None = None) -> Any:
    """A whole JSON file (a run's header or summary), checked as `parse_json` checks a line."""
    return parse_json(read_text(path, label), label or str(path))


def iter_jsonl(path: Path, label: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line, one line at a time; any fault is one
    InputError naming the file and line."""
    label = label or str(path)
    for n, line in iter_lines(path, label):
        yield n, parse_json(line, f"{label}:{n}")


def read_jsonl(path: Path, label: str | None = None) -> list[tuple[int, Any]]:
    """Every (line number, parsed value) of a JSONL file (see `iter_jsonl`)."""
    return list(iter_jsonl(path, label))


class ResumableJsonl:
    """Rows keyed by `key(row)`; a torn last line (killed mid-write) is dropped on open.

    `fields` names the fields every row must hold and their types: a row of this file that lacks one
    (edited by hand, another tool's file) fails on open naming file, line and field, rather than as a
    KeyError deep in a summary.
    """

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], str],
                 fields: dict[str, type | tuple[type, ...]] | None = None):
        self.path = Path(path)
        self.key = key
        self.fields = fields or {}
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self._load()
        self.done = {key(r) for r in self.rows}

    def _load(self) -> None:
        text = read_text(self.path)
        lines = text.split("\n")
        last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        good: list[str] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = parse_json(line, f"{self.path}:{i + 1}")
            except InputError as exc:
                if i != last:
                    raise InputError(f"{exc}: a corrupt row in the middle of the file; "
                                     "move the file away to start over") from None
                continue  # a torn last line: dropped, and the file rewritten without it
            self._check_row(row, f"{self.path}:{i + 1}")
            self.rows.append(row)
            good.append(line)
        if text and (not text.endswith("\n") or len(good) != sum(1 for ln in lines if ln.strip())):
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            tmp.replace(self.path)

    def _check_row(self, row: Any, where: str) -> None:
        """A row is an object with `fields` of their types and a key; else one InputError naming it."""
        try:
            check_fields(row, self.fields, where)
            hash(self.key(row))
        except InputError as exc:
            raise InputError(f"{exc}; move the file away to start over") from None
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: a row without its key field; move the file away to start over") from None

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


def check_fields(row: Any, fields: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    """`row` if it is a JSON object whose `fields` have their types (a bool is no int here); else one
    InputError naming `where` and the first field that is missing or of another type."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, kind in fields.items():
        value = row.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
            raise InputError(f"{where}: field {name!r} must be {_type_names(kind)}, got {value!r:.60}")
    return row


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind: type | tuple[type, ...]) -> str:
    """`a str` / `an int or a float`: what a field must be, for messages."""
    names = [t.__name__ for t in _types(kind)]
    return " or ".join(f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in names)


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    """The file's sha256 in hex, read in 1 MiB chunks (memory stays bounded whatever its size)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
