"""The rows of a prompt file, whatever it is stored as: JSONL (or plain text), parquet, an HF `datasets` folder.

Both prompt readers (`prompts.schema.read_prompts` for training, the loop and `unirl prompts`;
`generation.prompts.read_prompt_file` for `unirl generate`) take their rows from `iter_prompt_rows`, so
every command accepts the same formats and a bad row is the same one-line error: the file, the row (line
for JSONL) and the field. Table rows hold the JSONL's fields; a null cell counts as a missing field (a
parquet column exists in every row, so a row without `color` reads it as null). Parquet is read a batch of
rows at a time, an HF folder through its memory-mapped arrow files: neither is loaded whole.
Parquet and `datasets` folders need the `data` extra (pyarrow, datasets).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.types import InputError

EXTRA = "pip install 'unirl-kit[data]'"
PARQUET_SUFFIXES = (".parquet", ".pq")
_BATCH_ROWS = 1024
_DATASET_FILES = ("state.json", "dataset_info.json")  # what Dataset.save_to_disk writes beside its arrow files


def iter_prompt_rows(path: Path, label: str | None = None, text_lines: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row: `where` is "FILE:LINE" for JSONL, "FILE: row N" for tables (1-based).

    A JSONL row is its parsed JSON value; with `text_lines`, a line that does not start with `{` is
    yielded as its stripped text (a plain prompt). A table row is a dict without its null cells.
    """
    path = Path(path)
    label = label or str(path)
    if path.suffix.lower() in PARQUET_SUFFIXES and not path.is_dir():
        yield from _parquet_rows(path, label)
    elif path.is_dir() and (is_dataset_folder(path) or (path / "dataset_dict.json").is_file()):
        yield from _dataset_rows(path, label)
    else:
        for lineno, line in iter_lines(path, label):
            text = line.strip()
            where = f"{path}:{lineno}"
            yield (where, text) if text_lines and not text.startswith("{") else (where, parse_json(text, where))


def is_dataset_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk`."""
    return all((Path(path) / f).is_file() for f in _DATASET_FILES)


def _modules(label: str, kind: str) -> tuple[Any, Any]:
    """(pyarrow.parquet, datasets), or one InputError naming the extra that installs them."""
    try:
        import datasets
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{label}: reading a {kind} needs pyarrow and datasets; {EXTRA}") from None
    return pq, datasets


def _parquet_rows(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    """Batches of `_BATCH_ROWS` rows; columns that `datasets` stored as JSON text (its `Json` feature, e.g.
    `include` lists mixing strings and numbers) are decoded as `datasets` itself would."""
    pq, datasets = _modules(label, "parquet file")
    if not path.is_file():
        raise InputError(f"{label}: file not found")
    try:
        table = pq.ParquetFile(path)
        meta = table.schema_arrow.metadata or {}
        features = datasets.Features.from_arrow_schema(table.schema_arrow) if b"huggingface" in meta else None
        n = 0
        for batch in table.iter_batches(batch_size=_BATCH_ROWS):
            for row in batch.to_pylist():
                n += 1
                where = f"{path}: row {n}"
                yield where, _table_row(features.decode_example(row) if features else row, where)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{label}: not a readable parquet file ({' '.join(str(exc).split())[:160]})") from None


def _dataset_rows(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    """The rows of a saved `datasets.Dataset`, one at a time; a DatasetDict must name its split."""
    _, datasets = _modules(label, "datasets folder")
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise InputError(f"{label}: not a readable datasets folder ({' '.join(str(exc).split())[:160]})") from None
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        raise InputError(f"{label}: a DatasetDict with splits {splits}; give one split's folder "
                         f"(e.g. {path / (splits[0] if splits else 'train')})")
    for n, row in enumerate(data, 1):
        where = f"{path}: row {n}"
        yield where, _table_row(row, where)


def _table_row(row: Any, where: str) -> dict[str, Any]:
    """A table row as the JSONL line it stands for: nulls dropped (at any depth), JSON types only."""
    def clean(value: Any, field: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{field}.{k}" if field else k) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [clean(v, f"{field}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise InputError(f"{where}: field {field!r} holds a {type(value).__name__}, which a JSONL row cannot; "
                         "expected strings, numbers, booleans, lists and objects")

    return clean(row, "")
