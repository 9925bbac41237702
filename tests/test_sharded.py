"""unirl_kit.sharded on its own: two fake ranks (RANK / WORLD_SIZE, as torchrun sets them), resume after a
torn last line, parts and markers of an earlier sharded run merged and removed, the upgrade hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirl_kit.sharded import ShardedJsonl, part_path, rank_parts
from unirl_kit.types import InputError

ITEMS = [f"img{i}" for i in range(7)]
FIELDS = {"filename": str, "n": int}


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def run(out: Path, calls: list[str] | None = None, items: list[str] = ITEMS, **kw):
    """One rank's run over `items` (rows {"filename": item, "n": its index}); each item computed goes to `calls`."""
    def rows_for(batch: list[str]) -> list[dict]:
        if calls is not None:
            calls.extend(batch)
        return [{"filename": it, "n": int(it[3:])} for it in reversed(batch)]  # any order within a batch

    kw.setdefault("timeout_s", 5)
    return ShardedJsonl(out, "filename", FIELDS).run(items, lambda it: it, rows_for, 3, stage="test",
                                                     label="test", show_progress=False, **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "rank" in p.name or p.suffix == ".tmp")


def test_two_ranks_give_the_single_process_file(tmp_path, monkeypatch):
    single = tmp_path / "single" / "rows.jsonl"
    want = run(single)
    assert [r["filename"] for r in want] == ITEMS and lines(single) == want

    out = tmp_path / "sharded" / "rows.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    calls: list[str] = []
    assert run(out, calls) is None
    assert calls == ["img1", "img3", "img5"]
    assert sorted(r["filename"] for r in lines(part_path(out, 1))) == calls
    assert out.with_name("rows.rank1.done").is_file() and not out.exists()

    monkeypatch.setenv("RANK", "0")
    calls = []
    assert run(out, calls) == want
    assert calls == ["img0", "img2", "img4", "img6"]
    assert out.read_bytes() == single.read_bytes()
    assert leftovers(out.parent) == []


def test_rank0_waits_for_the_other_ranks_and_names_the_missing_marker(tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TimeoutError, match=r"the other ranks: .*rows\.rank1\.done never appeared"):
        run(out, timeout_s=0.3)
    assert out.with_name("rows.rank0.done").is_file() and part_path(out, 0).is_file()


def test_a_torn_last_line_is_dropped_and_only_the_missing_items_run(tmp_path):
    full = tmp_path / "full.jsonl"
    run(full)
    out = tmp_path / "rows.jsonl"
    text = full.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:4]) + text[4][: len(text[4]) // 2])
    calls: list[str] = []
    rows = run(out, calls)
    assert calls == ["img4", "img5", "img6"]
    assert out.read_bytes() == full.read_bytes() and lines(out) == rows


def test_parts_of_an_earlier_sharded_run_are_merged_and_removed(tmp_path):
    out = tmp_path / "rows.jsonl"
    part_path(out, 0).write_text("".join(json.dumps({"filename": f"img{i}", "n": i}) + "\n" for i in (6, 0)))
    part_path(out, 1).write_text(json.dumps({"filename": "img1", "n": 1}) + "\n")
    for r in (0, 1):
        out.with_name(f"rows.rank{r}.done").touch()
    calls: list[str] = []
    rows = run(out, calls)
    assert sorted(calls) == ["img2", "img3", "img4", "img5"]
    assert [r["filename"] for r in rows] == ITEMS and lines(out) == rows
    assert rank_parts(out) == [] and leftovers(tmp_path) == []


def test_rows_of_items_gone_are_dropped_and_the_file_rewritten_only_when_it_changed(tmp_path):
    out = tmp_path / "rows.jsonl"
    run(out)
    rows = run(out, items=ITEMS[:5])
    assert [r["filename"] for r in rows] == ITEMS[:5] and lines(out) == rows
    inode = out.stat().st_ino  # write_atomic replaces the file: a new inode
    assert run(out, items=ITEMS[:5]) == rows and out.stat().st_ino == inode


def test_upgrade_rewrites_old_rows_once(tmp_path):
    out = tmp_path / "rows.jsonl"
    run(out)

    def add_key(row: dict, item: str) -> dict:
        return row if "image" in row else {**row, "image": item}

    rows = run(out, upgrade=add_key)
    assert all(r["image"] == r["filename"] for r in rows) and lines(out) == rows
    inode = out.stat().st_ino
    assert run(out, upgrade=add_key) == rows and out.stat().st_ino == inode


def test_a_row_without_a_required_field_fails_on_open(tmp_path):
    from unirl_kit.types import InputError

    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"filename": "img0"}) + "\n" + json.dumps({"filename": "img1", "n": 1}) + "\n")
    with pytest.raises(InputError, match=r"rows\.jsonl:1: field 'n' must be an int"):
        ShardedJsonl(out, "filename", FIELDS)


def _gloo_rank(rank: int, init_file: str, out: str) -> None:
    """One rank of a real gloo group; RANK / WORLD_SIZE unset, so rank and world come from the group."""
    import os

    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = run(Path(out))
        Path(f"{out}.rank{rank}.returned").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def test_ranks_of_a_process_group_meet_at_a_barrier(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "results.jsonl"
    mp.spawn(_gloo_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert [r["n"] for r in lines(out)] == list(range(7))
    assert [r["n"] for r in json.loads((tmp_path / "results.jsonl.rank0.returned").read_text())] == list(range(7))
    assert json.loads((tmp_path / "results.jsonl.rank1.returned").read_text()) is None
    assert [p for p in leftovers(tmp_path) if not p.endswith(".returned")] == []


def test_a_stale_marker_is_not_trusted_and_a_partial_set_never_returned(tmp_path, monkeypatch):
    """A marker an earlier run over other items left does not count (rank 0 waits, then times out naming
    it). Where rank 1's marker is this run's but its rows are missing, rank 0 keeps the rows it has in
    OUT, clears markers and parts, and refuses to return the set; the rerun computes only the rest."""
    from unirl_kit.sharded import _items_token

    out = tmp_path / "rows.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")

    def rank0(timeout_s: float = 5):
        return ShardedJsonl(out, "filename", FIELDS, marker_prefix="").run(
            ITEMS, lambda it: it, lambda b: [{"filename": it, "n": int(it[3:])} for it in b], 3, timeout_s=timeout_s,
            stage="test", label="test", show_progress=False)

    out.with_name("rank1.done").write_text(_items_token(ITEMS[:3], lambda it: it))  # a run over 3 items
    with pytest.raises(TimeoutError, match=r"rank1.done never appeared"):
        rank0(timeout_s=1)
    out.with_name("rank1.done").write_text(_items_token(ITEMS, lambda it: it))  # this run's, rows lost
    with pytest.raises(InputError, match=r"rows.jsonl: 3 of 7 items have no row yet; rerun the same command"):
        rank0()
    assert sorted(r["n"] for r in lines(out)) == [0, 2, 4, 6] and leftovers(tmp_path) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    calls: list[str] = []
    assert [r["n"] for r in run(out, calls)] == list(range(7)) and calls == ["img1", "img3", "img5"]


def _everywhere_rank(rank: int, out: str, seen: dict) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    rows = ShardedJsonl(Path(out), "filename", FIELDS).run_everywhere(
        ITEMS, lambda it: it, lambda b: [{"filename": it, "n": int(it[3:]) * 10 + rank} for it in b], 2,
        timeout_s=60, stage="test", label="test", show_progress=False)
    seen[rank] = [r["n"] for r in rows]


def test_run_everywhere_gives_every_rank_all_rows(tmp_path):
    """Two processes without a process group (markers): each computes its share, both get every row in
    item order."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        seen = manager.dict()
        procs = [ctx.Process(target=_everywhere_rank, args=(r, str(tmp_path / "rows.jsonl"), seen)) for r in (0, 1)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(90)
        want = [i * 10 + i % 2 for i in range(7)]  # item i was computed by rank i % 2
        assert [proc.exitcode for proc in procs] == [0, 0] and seen[0] == want and seen[1] == want
    assert leftovers(tmp_path) == []
