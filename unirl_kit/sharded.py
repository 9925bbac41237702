"""One sharded, resumable JSONL map: every item to one JSON row, written as it goes, merged in item order.

`eval geneval` (results.jsonl) and `score` (scores.jsonl) turn each image of a folder into one row, and
`eval understanding` each question into an answer (`run_everywhere`); all must survive a kill and run
under torchrun without torch.distributed. This module owns that pattern once, so they cannot drift apart:

- resume: rows already in OUT (or in a part an earlier run left) are kept; only missing keys are run;
- shards: rank r of world runs items r, r + world, ... into OUT.rank{r}.jsonl (OUT's stem) and
  touches its marker; the ranks meet (`wait_for_ranks`: a torch.distributed barrier when a process
  group exists, else rank 0 polls the markers) and rank 0 merges the parts;
- merge: rows of items no longer present are dropped, the rest put in item order, `upgrade` applied
  (e.g. a field older rows lack); OUT is rewritten atomically only when any of that changed it;
- cleanup: part and marker files are removed once merged, on every run of rank 0.

Rank and world come from `unirl_kit.distributed.rank_and_world`, as for every stage.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from unirl_kit.distributed import rank_and_world, wait_for_rank0, wait_for_ranks
from unirl_kit.jsonl import ResumableJsonl, write_atomic
from unirl_kit.progress import Progress
from unirl_kit.types import InputError

T = TypeVar("T")
Row = dict[str, Any]
Fields = dict[str, type | tuple[type, ...]]


def part_path(out: Path, rank: int) -> Path:
    """Rank `rank`'s part beside `out`: results.jsonl -> results.rank{rank}.jsonl."""
    return Path(out).with_name(f"{Path(out).stem}.rank{rank}.jsonl")


def rank_parts(out: Path) -> list[Path]:
    """The parts of `out` on disk (an unfinished or earlier sharded run's), in name order."""
    out = Path(out)
    return sorted(out.parent.glob(f"{glob.escape(out.stem)}.rank*.jsonl"))


def _items_token(items: Sequence[T], item_key: Callable[[T], Any]) -> str:
    """A digest of the item keys: every rank of one run computes the same, a run over other items another."""
    import hashlib

    return hashlib.sha256(json.dumps([str(item_key(it)) for it in items]).encode()).hexdigest()[:16]


class ShardedJsonl(Generic[T]):
    """OUT opened for resuming (a damaged file fails here, before anything else is written); `run` then
    does this rank's share, and on rank 0 the merge.

    `key_field` names the field that keys a row; `fields` are what every row read back must hold (see
    `ResumableJsonl`). Markers are named `marker_prefix` + rank{r}.done beside OUT (default OUT's stem
    and a dot: scores.rank0.done).
    """

    def __init__(self, out: Path, key_field: str, fields: Fields, *, marker_prefix: str | None = None) -> None:
        self.out = Path(out)
        self.key_field = key_field
        self.fields = fields
        self.marker_prefix = f"{self.out.stem}." if marker_prefix is None else marker_prefix
        self.rank, self.world = rank_and_world()
        self.merged = ResumableJsonl(self.out, self.key, fields)
        self.store = self.merged  # where rows go now: OUT, or this rank's part once `run` opens it

    def key(self, row: Row) -> Any:
        return row[self.key_field]

    def marker(self, rank: int) -> Path:
        return self.out.with_name(f"{self.marker_prefix}rank{rank}.done")

    def _open(self, path: Path) -> ResumableJsonl:
        return ResumableJsonl(path, self.key, self.fields)

    def run(self, items: Sequence[T], item_key: Callable[[T], Any], rows_for: Callable[[list[T]], list[Row]],
            batch_size: int, *, timeout_s: float, stage: str, label: str, show_progress: bool = True,
            unit: str = "items", upgrade: Callable[[Row, T], Row] | None = None) -> list[Row] | None:
        """Run `rows_for` on each batch of this rank's missing items, appending its rows (one per item,
        any order); then, on rank 0, merge. Returns the rows of `items` in their order, or None on
        ranks > 0. A merged set with items missing (a stale marker let a crashed rank's share go
        missing) is refused, so no summary is ever made of part of the items.

        `upgrade(row, item)` returns the row as this version writes it, or the same object if it
        already is; `stage`, `label`, `show_progress`, `unit` describe the progress display.
        """
        if self.world == 1:
            for part in rank_parts(self.out):  # left by an earlier sharded run
                self.merged.append(self._open(part).rows)
            self._map(items, item_key, rows_for, batch_size, stage, label, show_progress, unit)
        else:
            self.store = self._open(part_path(self.out, self.rank))
            self.store.done |= self.merged.done
            self._map(items[self.rank::self.world], item_key, rows_for, batch_size, stage,
                      f"{label} rank {self.rank}", show_progress, unit)
            token = _items_token(items, item_key)  # what this run's markers say: a stale one says otherwise
            self.marker(self.rank).write_text(token)
            wait_for_ranks([self.marker(r) for r in range(self.world)], timeout_s, "the other ranks", token)
            if self.rank != 0:
                return None
            for r in range(self.world):
                self.merged.append(self._open(part_path(self.out, r)).rows)
        rows = self._in_order(items, item_key, upgrade)
        for stale in [*rank_parts(self.out), *self.out.parent.glob(f"{glob.escape(self.marker_prefix)}rank*.done")]:
            stale.unlink(missing_ok=True)  # their rows are in OUT now
        if len(rows) != len(items):
            raise InputError(f"{self.out}: {len(items) - len(rows)} of {len(items)} {unit} have no row yet; "
                             "rerun the same command to finish them")
        return rows

    def run_everywhere(self, items: Sequence[T], item_key: Callable[[T], Any],
                       rows_for: Callable[[list[T]], list[Row]], batch_size: int, *, timeout_s: float, stage: str,
                       label: str, show_progress: bool = True, unit: str = "items") -> list[Row]:
        """`run`, then every rank reads the merged rows (a stage whose next step needs all of them on
        every rank, e.g. the understanding protocols grading answers): a barrier of the process group
        after rank 0's merge when one exists, else ranks > 0 read OUT (written atomically by rank 0)
        until it holds every item."""
        rows = self.run(items, item_key, rows_for, batch_size, timeout_s=timeout_s, stage=stage, label=label,
                        show_progress=show_progress, unit=unit)
        if self.world == 1:
            return rows or []
        order = {item_key(it): i for i, it in enumerate(items)}
        seen: list[Row] = []

        def merged() -> bool:  # OUT's rows of `items`, read only (rank 0 owns OUT)
            seen[:] = self._ordered(self._open(self.out).rows, order) if self.out.exists() else []
            return len(seen) == len(items)

        wait_for_rank0(timeout_s, f"rank 0 to merge {self.out.name}", done=merged)
        if rows is not None:
            return rows
        if not seen and not merged():  # after a barrier `merged` was never polled: read OUT now
            raise InputError(f"{self.out}: rank 0 merged {len(seen)} of {len(items)} {unit}; rerun the same command")
        return seen

    def _map(self, items: Sequence[T], item_key: Callable[[T], Any], rows_for: Callable[[list[T]], list[Row]],
             batch_size: int, stage: str, label: str, show_progress: bool, unit: str) -> None:
        todo = [it for it in items if item_key(it) not in self.store.done]
        with Progress(stage, show_progress and self.rank == 0) as progress:
            task = progress.task(label, len(todo), unit)
            for start in range(0, len(todo), batch_size):
                batch = list(todo[start:start + batch_size])
                self.store.append(rows_for(batch))
                task.advance(len(batch))

    def _ordered(self, rows: list[Row], order: dict[Any, int]) -> list[Row]:
        """The rows whose key `order` ranks, in that order (item keys -> positions)."""
        return sorted((r for r in rows if self.key(r) in order), key=lambda r: order[self.key(r)])

    def _in_order(self, items: Sequence[T], item_key: Callable[[T], Any],
                  upgrade: Callable[[Row, T], Row] | None) -> list[Row]:
        """The merged rows of `items`, in their order; OUT is rewritten if that differs from the file."""
        order = {item_key(it): i for i, it in enumerate(items)}
        kept = self._ordered(self.merged.rows, order)
        rows = [upgrade(r, items[order[self.key(r)]]) for r in kept] if upgrade else kept
        changed = any(new is not old for new, old in zip(rows, kept, strict=True))
        if changed or [self.key(r) for r in rows] != [self.key(r) for r in self.merged.rows]:
            write_atomic(self.out, "".join(json.dumps(r) + "\n" for r in rows))
        return rows
