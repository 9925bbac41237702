"""Atomic, resumable checkpoints: weights in safetensors, optimizer/scheduler/RNG/step beside them.

A checkpoint is a folder written under a temporary name and renamed into place, so a kill never
leaves a torn checkpoint; `latest_checkpoint` only ever sees complete ones. One torn some other way
(a half copy, a disk fault) is skipped by `latest_readable` with a warning: a resume falls back to the
previous good checkpoint.

Nothing is pickled: the state beside the weights is `state.safetensors` (its tensors and arrays) plus
`state.json` (everything else, pointing at the tensors by name), because unpickling a file someone
hands you runs whatever code it names. A `state.pt` of an older unirl-kit is refused; if it is
trusted, `python -m unirl_kit.checkpoint convert CHECKPOINTS_DIR --trust-pickle` rewrites it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from unirl_kit.types import InputError, first_line

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_JSON, STATE_TENSORS, PICKLED_STATE = "state.json", "state.safetensors", "state.pt"
_TAGS = ("$tensor", "$ndarray", "$tuple", "$items")  # a plain dict never has a key starting with "$"


class UnreadableCheckpoint(InputError):
    """A checkpoint that cannot be read whole (a torn copy, a disk fault, a file edited by hand): a
    resume falls back past it to the previous good one."""


@contextmanager
def safetensors_errors(path: Path, fix: str, error: type[InputError] = InputError) -> Iterator[None]:
    """Inside the block, a garbage, truncated or empty safetensors file (SafetensorError) or one that
    cannot be opened becomes one `error` naming `path`; `fix` says what to do about it."""
    try:
        yield
    except SafetensorError as exc:
        raise error(f"{path}: not a readable safetensors file ({first_line(exc)}); {fix}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise error(f"{path}: cannot be read ({exc.strerror}); {fix}") from None


def read_tensors(path: Path, fix: str, error: type[InputError] = InputError) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, or one `error` naming it (see `safetensors_errors`)."""
    with safetensors_errors(path, fix, error):
        return load_file(path)


def save_checkpoint(root: Path, step: int, model: torch.nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """root/step-N/{model.safetensors, state.safetensors, state.json}; older ones beyond `keep` are
    removed. `model` is a module (its whole state dict) or just the tensors to keep (e.g. a LoRA adapter's)."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = model if isinstance(model, dict) else model.state_dict()
    weights = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(_untie(weights), tmp / "model.safetensors")
    save_state(tmp, {**state, "step": step, "torch_rng": torch.get_rng_state()})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(_steps(root))[:-keep] if keep > 0 else []:
        shutil.rmtree(root / f"step-{old:07d}", ignore_errors=True)
    return final


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """`state` (dicts, lists, tuples, tensors, numpy arrays, plain scalars) as state.safetensors +
    state.json in `folder`; the JSON is written last, so a folder with it holds a whole state."""
    from unirl_kit.jsonl import write_atomic

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    save_file(_untie(tensors), Path(folder) / STATE_TENSORS)
    write_atomic(Path(folder) / STATE_JSON, json.dumps(tree) + "\n")


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for `obj`: tensors and arrays move into `tensors` by name; tuples and dicts whose keys JSON
    cannot keep (ints, say: an optimizer's parameter ids) are tagged so they read back as they were."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        name = str(len(tensors))
        is_array = isinstance(obj, np.ndarray)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj)) if is_array else obj.detach().cpu().contiguous()
        return {"$ndarray" if is_array else "$tensor": name}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state: a {type(obj).__name__} cannot be saved without pickle")


def read_state(folder: Path, shapes_only: Collection[str] = ()) -> dict[str, Any]:
    """The state saved beside a checkpoint's weights. A pickled state.pt (an older unirl-kit) is refused,
    never unpickled: unpickling runs whatever code the file names. A missing or unreadable state is an
    `UnreadableCheckpoint`. The tensors under the top-level keys `shapes_only` come back as meta tensors
    (shape and dtype from the file's header, no data read): for a rank that gets their values another
    way (FSDP: broadcast from rank 0) but needs the structure around them."""
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file():
        if (folder / PICKLED_STATE).is_file():
            raise InputError(f"{folder / PICKLED_STATE}: a pickled checkpoint state (older unirl-kit), not loaded "
                             "because unpickling can run code; if you trust where it came from, convert it: "
                             f"python -m unirl_kit.checkpoint convert {folder.parent} --trust-pickle")
        raise UnreadableCheckpoint(f"{folder}: no {STATE_JSON}; not a whole unirl-kit checkpoint")
    try:
        tree = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        skip = _tensor_names([tree[k] for k in shapes_only if isinstance(tree, dict) and k in tree])
        return _decode(tree, _read_all_but(folder / STATE_TENSORS, skip), folder)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RecursionError, SafetensorError) as exc:
        raise UnreadableCheckpoint(f"{folder}: unreadable checkpoint state ({type(exc).__name__}: "
                                   f"{first_line(exc)})") from None


def _tensor_names(tree: Any) -> set[str]:
    """The names of the tensors (not arrays) an encoded tree points at."""
    if isinstance(tree, list):
        return set().union(*map(_tensor_names, tree))
    if not isinstance(tree, dict):
        return set()
    if len(tree) == 1 and "$tensor" in tree:  # a plain dict with such a key is encoded under "$items"
        return {tree["$tensor"]}
    return set().union(*map(_tensor_names, tree.values()))


def _read_all_but(path: Path, skip: set[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, those in `skip` as meta tensors of their saved shape (unread)."""
    if not skip:
        return load_file(path)
    with safe_open(path, "pt") as f:
        return {k: _unread(f.get_slice(k)) if k in skip else f.get_tensor(k) for k in f.keys()}


def _unread(view: Any) -> torch.Tensor:
    """A stand-in for a tensor not read: its shape and (where torch has it) dtype, no storage."""
    dtype = _SAFETENSORS_DTYPES.get(view.get_dtype(), torch.uint8)
    return torch.empty(view.get_shape(), dtype=dtype, device="meta")


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _decode(tree: Any, tensors: dict[str, torch.Tensor], folder: Path) -> Any:
    """`_encode` undone: tagged nodes become tensors, arrays, tuples and non-string-keyed dicts again."""
    if isinstance(tree, list):
        return [_decode(v, tensors, folder) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tag = next(iter(tree), None)
    if len(tree) != 1 or tag not in _TAGS:
        return {k: _decode(v, tensors, folder) for k, v in tree.items()}
    value = tree[tag]
    if tag == "$tuple":
        return tuple(_decode(v, tensors, folder) for v in value)
    if tag == "$items":
        return {_decode(k, tensors, folder): _decode(v, tensors, folder) for k, v in value}
    if value not in tensors:
        raise UnreadableCheckpoint(f"{folder / STATE_JSON}: names tensor {value!r}, which {STATE_TENSORS} lacks")
    return tensors[value].numpy() if tag == "$ndarray" else tensors[value]


def convert_pickled(root: Path) -> list[Path]:
    """Rewrite each step-N/state.pt under `root` (a checkpoints folder, or one step-N folder) as
    state.safetensors + state.json and delete the pickle. It unpickles: only for files you trust."""
    root = Path(root)
    folders = [root] if (root / PICKLED_STATE).is_file() else [root / f"step-{s:07d}" for s in sorted(_steps(root))]
    done = []
    for folder in folders:
        if (folder / PICKLED_STATE).is_file():
            save_state(folder, torch.load(folder / PICKLED_STATE, map_location="cpu", weights_only=False))
            (folder / PICKLED_STATE).unlink()
            done.append(folder)
    return done


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): give each tensor its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _steps(root: Path) -> list[int]:
    if not Path(root).is_dir():
        return []
    return [int(m.group(1)) for p in Path(root).iterdir() if (m := _STEP_DIR.match(p.name))]


def latest_checkpoint(root: Path) -> Path | None:
    steps = _steps(root)
    return Path(root) / f"step-{max(steps):07d}" if steps else None


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(saved state, weights) of one checkpoint folder, read whole before anything is loaded anywhere."""
    state = read_state(folder)  # first: a refused state.pt fails before the weights are read
    weights = read_tensors(Path(folder) / "model.safetensors", "the checkpoint is torn", UnreadableCheckpoint)
    return state, weights


def weight_names(folder: Path) -> list[str]:
    """The tensor names in a checkpoint's model.safetensors, from its header alone (no tensor is read)."""
    path = Path(folder) / "model.safetensors"
    with safetensors_errors(path, "the checkpoint is torn", UnreadableCheckpoint), safe_open(path, "pt") as f:
        return list(f.keys())


def latest_readable(root: Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]] | None:
    """(folder, state, weights) of the newest checkpoint under `root` that reads whole; None if there is none.

    Checkpoints are renamed into place whole, yet a copied or damaged folder can still be torn: then the
    resume goes on from the previous good one (its later steps are trained again), with a warning line
    per checkpoint skipped. When none reads, the error names the newest.
    """
    skipped: list[UnreadableCheckpoint] = []
    for step in sorted(_steps(root), reverse=True):
        folder = Path(root) / f"step-{step:07d}"
        try:
            state, weights = read_checkpoint(folder)
        except UnreadableCheckpoint as exc:
            skipped.append(exc)
            continue
        for exc in skipped:
            print(f"warning: {exc}; resuming from the previous good checkpoint, {folder}", file=sys.stderr)
        return folder, state, weights
    if skipped:
        raise InputError(f"{root}: no readable checkpoint to resume from (newest: {skipped[0]}); "
                         "move the folder away to start over")
    return None


def _restore(model: torch.nn.Module, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Weights into `model` (strict) and the torch RNG as saved; returns the state."""
    model.load_state_dict(weights, strict=True)
    torch.set_rng_state(state["torch_rng"])
    return state


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load one checkpoint's weights into `model` (strict) and return its saved state (optimizer, step, ...)."""
    return _restore(model, *read_checkpoint(path))


def load_latest(root: Path, model: torch.nn.Module) -> dict[str, Any] | None:
    """`load_checkpoint` of the newest readable checkpoint under `root` (see `latest_readable`); None if none."""
    found = latest_readable(root)
    return None if found is None else _restore(model, found[1], found[2])


def main(argv: list[str] | None = None) -> int:
    """`python -m unirl_kit.checkpoint convert DIR --trust-pickle`: the one way to keep an old pickled state."""
    parser = argparse.ArgumentParser(prog="python -m unirl_kit.checkpoint",
                                     description="Rewrite pickled checkpoint states (state.pt) as safetensors + JSON.")
    parser.add_argument("action", choices=["convert"])
    parser.add_argument("folder", type=Path, help="a checkpoints folder (e.g. run.out/checkpoints) or one step-N folder")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="required: unpickling runs any code the file names, so only for files you trust")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        print(f"{args.folder}: converting unpickles state.pt, which can run code; pass --trust-pickle if you "
              "trust where it came from", file=sys.stderr)
        return 2
    done = convert_pickled(args.folder)
    if not done:
        print(f"{args.folder}: no {PICKLED_STATE} to convert", file=sys.stderr)
        return 2
    for folder in done:
        print(f"{folder}: {PICKLED_STATE} -> {STATE_TENSORS} + {STATE_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
