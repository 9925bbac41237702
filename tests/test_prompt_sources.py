"""Prompt files as parquet and HF `datasets` folders: the same prompts as the JSONL they were made from,
the same one-line errors (file, row, field), batched parquet reads, and the `data` extra named when missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unirl_kit.generation.prompts import read_prompt_file
from unirl_kit.prompts.schema import read_prompts
from unirl_kit.types import InputError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")


def _rows(prompts: Path) -> list[dict]:
    return [json.loads(line) for line in prompts.read_text().splitlines()]


def _no_position(rows: list[dict]) -> list[dict]:
    """Rows a plain arrow table can hold: `position` mixes a string and an int, which arrow lists cannot."""
    return [r for r in rows if not any("position" in req for req in r["include"])]


def _table(rows: list[dict]):
    """An arrow table with a column for every field of any row (from_pylist takes the first row's keys);
    a row without a field, or a requirement without `color`, gets a null cell."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def test_parquet_holds_the_jsonl_prompts(prompts, tmp_path):
    rows = _no_position(_rows(prompts))
    jsonl, table = tmp_path / "p.jsonl", tmp_path / "p.parquet"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(_table(rows), table)
    assert any("exclude" not in r for r in rows) and any("color" in q for r in rows for q in r["include"])
    assert read_prompts(table) == read_prompts(jsonl)
    assert read_prompt_file(table) == read_prompt_file(jsonl) == rows


def test_datasets_folder_and_its_parquet_hold_every_prompt(prompts, tmp_path):
    """`datasets` stores the mixed `position` lists as JSON text; both of its outputs read back as the JSONL."""
    data = datasets.Dataset.from_json(str(prompts), cache_dir=str(tmp_path / "cache"))
    data.save_to_disk(str(tmp_path / "ds"))
    data.to_parquet(str(tmp_path / "ds.parquet"))
    expected = read_prompts(prompts)
    assert any(r.position for s in expected for r in s.include)
    assert read_prompts(tmp_path / "ds") == expected
    assert read_prompts(tmp_path / "ds.parquet") == expected
    assert read_prompt_file(tmp_path / "ds") == _rows(prompts)


def test_bad_rows_name_file_row_and_field(tmp_path, monkeypatch):
    from unirl_kit.prompts import sources

    good = {"tag": "single_object", "prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([good] * 4 + [{**good, "prompt": None}]), path)
    monkeypatch.setattr(sources, "_BATCH_ROWS", 2)  # row numbers run on over batches
    with pytest.raises(InputError, match=r"^\S+bad.parquet: row 5: field 'prompt' must be a string, got None$"):
        read_prompts(path)
    pq.write_table(pa.Table.from_pylist([{**good, "include": [{"class": "circle", "count": 0}]}]), path)
    with pytest.raises(InputError, match=r"bad.parquet: row 1 include\[0\]: 'count' must be a positive integer"):
        read_prompt_file(path)
    datasets.Dataset.from_list([good, {**good, "tag": "", "prompt": " "}]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(InputError, match=r"ds: row 2: field 'prompt' is empty"):
        read_prompt_file(tmp_path / "ds")


def test_unreadable_tables_are_one_line(tmp_path):
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"g.parquet: not a readable parquet file"):
        read_prompts(garbage)
    with pytest.raises(InputError, match="file not found"):
        read_prompts(tmp_path / "none.parquet")
    stamp = pa.Table.from_pylist([{"tag": "single_object", "prompt": "x", "include": [{"class": "c"}],
                                   "when": __import__("datetime").date(2024, 1, 1)}])
    pq.write_table(stamp, tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"d.parquet: row 1: field 'when' holds a date"):
        read_prompt_file(tmp_path / "d.parquet")
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "x"}])})
    split.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"dd: a DatasetDict with splits \['train'\]; give one split's folder"):
        read_prompts(tmp_path / "dd")


def test_without_the_extra_the_error_names_it(prompts, tmp_path, monkeypatch):
    table = tmp_path / "p.parquet"
    pq.write_table(_table(_no_position(_rows(prompts))), table)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"p.parquet: reading a parquet file needs pyarrow and datasets; "
                                         r"pip install 'unirl-kit\[data\]'"):
        read_prompts(table)
    assert read_prompts(prompts)  # JSONL needs neither
