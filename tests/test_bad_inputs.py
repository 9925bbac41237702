"""Bad inputs on every command (issue 17): each ends in exit code 2 and one `error:` line on stderr that
says what is wrong and where, never a traceback, and every output already on disk stays as it was.

The catalogue (`CASES`) is a table: an id, how to build the bad input (in tmp_path, cheaply) and the
command line, and what the error line must say. Each case runs in-process through the CLI (a new
process would spend seconds importing torch) next to one small finished run per command family,
built once for the module; every file under those runs and under tmp_path is snapshotted before and
compared after. Most cases fail before a model loads, so the table runs in well under a minute.

Property tests at the end feed arbitrary bytes and JSON to the JSONL and metadata readers: they
return, or raise InputError; nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unirl_kit.cli import app
from unirl_kit.types import InputError

Args = list[Any]

# ---------------------------------------------------------------- the finished runs every case sits beside

GRPO_TINY = ["backbone.name=janus", "backbone.device=cpu", "prompts_per_step=2", "group_size=2",
             "rewards=[geneval-partial]", "optim.micro_batch=4", "run.report_to=[jsonl]", "run.progress=false"]
SFT_TINY = [*GRPO_TINY[:4], "optim.micro_batch=4", "run.report_to=[jsonl]", "run.progress=false"]
PRETRAIN_TINY = ["stages=[tokenizer]", "tokenizer.steps=2", "tokenizer.image_size=32", "tokenizer.batch_size=2",
                 "tokenizer.channel_multiplier=[1,2]", "tokenizer.latent_channels=32", "tokenizer.codebook_size=32",
                 "tokenizer.bf16=false", "tokenizer.checkpoint_every=1", "tokenizer.warmup_steps=1",
                 "tokenizer.log_every=1"]


@dataclass(frozen=True)
class Runs:
    """One finished run per command family (module-scoped; no case may change any of its files)."""

    root: Path
    model: Path
    prompts: Path
    render: Path
    gen: Path  # generated (GenEval layout + tokens) and scored with geneval-partial
    geneval: Path
    und: Path
    grpo: Path  # 2 steps, a checkpoint at each
    sft: Path
    loop_yaml: Path
    loop: Path
    pre: Path

    def grpo_args(self, *extra: object) -> Args:
        return ["train", "grpo", f"backbone.model={self.model}", *GRPO_TINY, *extra]

    def sft_args(self, *extra: object) -> Args:
        return ["train", "sft", f"backbone.model={self.model}", *SFT_TINY, *extra]

    def gen_args(self, *extra: object) -> Args:
        return ["generate", "--backbone", "janus", "--model", self.model, "--group-size", "2", "backbone.device=cpu",
                "progress=false", *extra]

    def und_args(self, *extra: object) -> Args:
        return ["eval", "understanding", "--backbone", "janus", "--model", self.model, "--device", "cpu",
                "per_tag=1", "progress=false", *extra]


def invoke(*args: object, env: dict[str, str] | None = None):
    """The CLI in this process, stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})


def _ok(*args: object) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, (args, result.stderr, result.exception)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs are rank 0 of 1 whatever the environment running the tests says."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "UNIRL_MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every command once, tiny (a random 32 px Janus): about 15 s on 2 cores."""
    from unirl_kit.testing.tiny_janus import save_random_janus

    root = tmp_path_factory.mktemp("finished")
    model = save_random_janus(root / "model", text_hidden=64, text_layers=2, image_size=32, seed=1)
    r = Runs(root, model, root / "prompts.jsonl", root / "render", root / "gen", root / "geneval", root / "und",
             root / "grpo", root / "sft", root / "loop.yaml", root / "loop", root / "pre")
    _ok("prompts", "--n", "6", "--out", r.prompts)
    _ok("render", r.prompts, "--out", r.render, "--images-per-prompt", "1")
    _ok(*r.gen_args("--prompts", r.prompts, "--out", r.gen))
    _ok("score", r.gen, "--reward", "geneval-partial", "progress=false")
    _ok("eval", "geneval", r.render, "--out", r.geneval, "progress=false")
    _ok(*r.und_args("-p", "clean", "--out", r.und))
    _ok(*r.grpo_args(f"prompts={r.prompts}", f"run.out={r.grpo}", "run.steps=2", "run.checkpoint_every=1"))
    _ok(*r.sft_args(f"prompts={r.prompts}", f"run.out={r.sft}", "run.steps=1"))
    r.loop_yaml.write_text(yaml.safe_dump({
        "backbone": {"name": "janus", "model": str(model), "device": "cpu"}, "n_train": 6, "n_eval": 3,
        "eval_group_size": 1, "understanding": ["clean"], "understanding_per_tag": 1, "rewards": ["geneval"],
        "progress": False, "grpo_overrides": ["run.steps=1", *GRPO_TINY[2:]]}))
    _ok("loop", "--config", r.loop_yaml, f"out={r.loop}")
    _ok("pretrain", f"out={r.pre}", *PRETRAIN_TINY)
    return r


# ---------------------------------------------------------------- snapshots: earlier outputs unchanged

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> content hash: unchanged files hash once


def snapshot(*roots: Path) -> dict[str, tuple[int, int | str]]:
    """Every regular file under `roots`: its size and content hash, or its mtime for files over 1 MiB
    (weights, which nothing may rewrite). A resume that rewrites config.yaml with the same text, or
    takes and releases a lock, changes no content."""
    out: dict[str, tuple[int, int | str]] = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size >= 1 << 20:
                    out[path] = (st.st_size, st.st_mtime_ns)
                    continue
                key = (path, st.st_size, st.st_mtime_ns)
                if key not in _DIGESTS:
                    try:
                        _DIGESTS[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                    except PermissionError:  # an unreadable case's input: its mtime tells a write
                        _DIGESTS[key] = str(st.st_mtime_ns)
                out[path] = (st.st_size, _DIGESTS[key])
    return out


# ---------------------------------------------------------------- bad files

def png_bytes(width: int = 8, height: int = 8) -> bytes:
    """A valid RGB PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


GARBAGE = bytes((i * 97 + 13) % 256 for i in range(4096))  # high bytes: not UTF-8
BINARY_UTF8 = b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x7fELF\x02\x01\x01\x00\x00\x00\n\x00\x01\x02\x03\n"
DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 30_000 + "1" + "}" * 30_000
DEPTH_40 = '{"tag": "x", "extra": ' + "[" * 40 + "]" * 40 + "}"
HUGE_INT = '{"tag": ' + "9" * 6000 + "}"
BOM = b"\xef\xbb\xbf"


def _line2(bad: str | bytes) -> Callable[[list[bytes]], bytes]:
    """A file of the slot's good lines with `bad` as its line 2 (the middle: never a torn last line)."""
    raw = bad.encode() if isinstance(bad, str) else bad
    return lambda good: good[0] + raw + b"\n" + good[-1]


# kind -> (file content from the slot's good lines, what the error line says)
CONTENT_KINDS: dict[str, tuple[Callable[[list[bytes]], bytes], str]] = {
    "garbage": (lambda good: GARBAGE, r":\d+: not UTF-8"),
    "binary-utf8": (lambda good: BINARY_UTF8, r"malformed JSON|expected"),
    "utf16": (lambda good: b"".join(good).decode().encode("utf-16"), r":1: not UTF-8"),
    "latin1-line2": (_line2(b"a caf\xe9 au lait"), r":2: not UTF-8"),
    "bom-then-garbage": (lambda good: BOM + b"{oops\n", r":1: malformed JSON"),
    "torn-line2": (lambda good: good[0] + good[-1][: len(good[-1]) // 2] + b"\n" + good[-1], r":2: malformed JSON"),
    "nul-line2": (_line2(b'{"tag": "x"}\x00'), r":2: malformed JSON"),
    "deep-array-line2": (_line2(DEEP_ARRAY), r":2: JSON nested deeper"),
    "deep-object-line2": (_line2(DEEP_OBJECT), r":2: JSON nested deeper"),
    "depth-40-line2": (_line2(DEPTH_40), r":2: JSON nested deeper than 32"),
    "huge-int-line2": (_line2(HUGE_INT), r":2: malformed JSON"),
    "array-line2": (_line2("[1, 2, 3]"), r":2: expected"),
    "string-line2": (_line2('"a photo of a cat"'), r":2: expected"),
    "number-line2": (_line2("42"), r":2: expected"),
    "null-line2": (_line2("null"), r":2: expected"),
    "empty": (lambda good: b"", r"no |empty"),
    "blank": (lambda good: b"\n  \n\t\n", r"no |empty"),
}
PATH_KINDS: dict[str, str] = {  # a path that is no readable file -> what the error line says
    "missing": r"not found",
    "folder": r"is a folder",
    "fifo": r"not a regular file",
    "symlink-loop": r"cannot be read|not found",
    "under-a-file": r"not found|not a folder",
    "unreadable": r"permission denied",
}


@dataclass
class Ctx:
    """What a case builds its inputs with."""

    runs: Runs
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def bad_path(self, kind: str, name: str) -> Path:
        """A path of `kind` (see PATH_KINDS); unreadable is skipped as root, who reads everything."""
        path = self.tmp / name
        if kind == "missing":
            return path
        if kind == "folder":
            path.mkdir(parents=True)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink-loop":
            path.symlink_to(path)
        elif kind == "under-a-file":
            self.file("plain-file", "x")
            return self.tmp / "plain-file" / name
        elif kind == "unreadable":
            if os.geteuid() == 0:
                pytest.skip("root reads unreadable files")
            self.file(name, "{}\n").chmod(0)
        return path

    def copy(self, src: Path, name: str) -> Path:
        """A copy of a finished run to damage (the original stays as it is), its saved settings moved with
        it (config.yaml names the folder: a resume of the copy is the same run)."""
        dst = self.tmp / name
        shutil.copytree(src, dst, symlinks=True)
        for saved in dst.rglob("*config.yaml"):
            saved.write_text(saved.read_text().replace(str(src), str(dst)))
        return dst

    def metadata_line(self, index: int = 0) -> str:
        return (self.runs.render / f"{index:05d}" / "metadata.jsonl").read_text().strip()

    def disk_full(self, target: str) -> None:
        """Make `target` ("module.attr" or "module.Class.attr") raise ENOSPC, as a full disk does."""
        def raise_enospc(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp / "where"))

        module, _, attr = target.rpartition(".")
        obj: Any
        try:
            import importlib

            obj = importlib.import_module(module)
        except ImportError:
            mod, _, cls = module.rpartition(".")
            obj = getattr(importlib.import_module(mod), cls)
        self.monkeypatch.setattr(obj, attr, raise_enospc)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], Args]
    expect: str  # a regex the error line must match
    names: Callable[[Ctx], str] | None = None  # text the line must hold (the file), when not in `expect`


CASES: list[Case] = []


def cases(prefix: str, expect: str, build: Callable[[Ctx, str], Args], values: Sequence[str]) -> None:
    """One entry per value: `build(ctx, value)`, whose error line matches `expect`."""
    for value in values:
        CASES.append(Case(f"{prefix}[{value}]", lambda c, v=value: build(c, v), expect))


@dataclass(frozen=True)
class Slot:
    """Where a command reads a JSONL file: the command line for a path, the file's good lines, and the
    kinds that are not bad here (an empty exclude file excludes nothing) or say something else."""

    name: str
    args: Callable[[Ctx, Path], Args]
    good: Callable[[Ctx], list[bytes]]
    skip: tuple[str, ...] = ()
    expect: dict[str, str] | None = None
    place: Callable[[Ctx, bytes | None, str], Path] | None = None  # writes the file itself (inside a folder)


def add_slot(slot: Slot) -> None:
    """Every content and path kind for one slot."""
    def content_case(kind: str, make: Callable[[list[bytes]], bytes], expect: str) -> None:
        def build(c: Ctx) -> Args:
            data = make(slot.good(c))
            path = slot.place(c, data, kind) if slot.place else c.file(f"{kind}.jsonl", data)
            return slot.args(c, path)
        CASES.append(Case(f"{slot.name}[{kind}]", build, expect, names=_name_of(slot, kind)))

    for kind, (make, expect) in CONTENT_KINDS.items():
        if kind not in slot.skip:
            content_case(kind, make, (slot.expect or {}).get(kind, expect))
    for kind, expect in PATH_KINDS.items():
        if kind in slot.skip:
            continue
        def build(c: Ctx, kind: str = kind) -> Args:
            path = slot.place(c, None, kind) if slot.place else c.bad_path(kind, f"{kind}.jsonl")
            return slot.args(c, path)
        CASES.append(Case(f"{slot.name}[{kind}]", build, (slot.expect or {}).get(kind, expect),
                          names=_name_of(slot, kind)))


def _name_of(slot: Slot, kind: str) -> Callable[[Ctx], str]:
    """The file name the error line must hold."""
    return lambda c: "metadata.jsonl" if slot.place and "metadata" in slot.name else (
        "results.jsonl" if slot.place and "results" in slot.name else (
            "scores.jsonl" if slot.place else f"{kind}.jsonl"))


def good_prompt_lines(c: Ctx) -> list[bytes]:
    return [ln + b"\n" for ln in c.runs.prompts.read_bytes().splitlines()[:2]]


def good_vqa_lines(c: Ctx) -> list[bytes]:
    c.file("red.png", png_bytes())
    line = json.dumps({"image": "red.png", "question": "What colour is it?", "answers": ["purple"]})
    return [line.encode() + b"\n"] * 2


def good_detection_lines(c: Ctx) -> list[bytes]:
    return [json.dumps({"filename": f"{i:05d}/samples/0000.png", "detections": []}).encode() + b"\n" for i in range(2)]


def good_results_rows(c: Ctx) -> list[bytes]:
    return [ln + b"\n" for ln in (c.runs.geneval / "results.jsonl").read_bytes().splitlines()[:2]]


def good_score_rows(c: Ctx) -> list[bytes]:
    return [ln + b"\n" for ln in (c.runs.gen / "scores.jsonl").read_bytes().splitlines()[:2]]


def _in_folder(copy_of: Callable[[Runs], Path], rel: str) -> Callable[[Ctx, bytes | None, str], Path]:
    """Place the bad file at `rel` inside a copy of a finished folder; returns the copy."""
    def place(c: Ctx, data: bytes | None, kind: str) -> Path:
        folder = c.copy(copy_of(c.runs), "copy")
        target = folder / rel
        target.unlink()
        if data is not None:
            target.write_bytes(data)
        elif kind == "folder":
            target.mkdir()
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "symlink-loop":
            target.symlink_to(target)
        elif kind == "unreadable":
            if os.geteuid() == 0:
                pytest.skip("root reads unreadable files")
            target.write_text("{}\n")
            target.chmod(0)
        return folder
    return place


# A metadata.jsonl holds one line: three valid JSON lines are refused for their number first.
ONE_LINE_ONLY = dict.fromkeys(("array-line2", "string-line2", "number-line2", "null-line2"),
                              "expected exactly one metadata line, found 3")
SLOTS = [
    Slot("prompts --exclude", lambda c, p: ["prompts", "--n", "4", "--exclude", p, "--out", c.runs.prompts],
         good_prompt_lines, skip=("empty", "blank")),
    Slot("render PROMPTS", lambda c, p: ["render", p, "--out", c.runs.render, "--images-per-prompt", "1"],
         good_prompt_lines, expect={"empty": "no prompts", "blank": "no prompts"}),
    Slot("generate --prompts", lambda c, p: c.runs.gen_args("--prompts", p, "--out", c.runs.gen),
         good_prompt_lines,
         skip=("array-line2", "string-line2", "number-line2", "null-line2", "deep-array-line2"),  # plain prompts
         expect={"binary-utf8": "control character"}),
    Slot("train grpo prompts=", lambda c, p: c.runs.grpo_args(f"prompts={p}", f"run.out={c.tmp / 'run'}"),
         good_prompt_lines, expect={"empty": "no prompts", "blank": "no prompts"}),
    Slot("train sft prompts=", lambda c, p: c.runs.sft_args(f"prompts={p}", f"run.out={c.tmp / 'run'}"),
         good_prompt_lines, skip=("blank", "utf16", "fifo", "symlink-loop", "nul-line2"),
         expect={"empty": "no prompts"}),
    Slot("loop train_prompts=", lambda c, p: ["loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}",
                                                f"train_prompts={p}"],
         good_prompt_lines, skip=("utf16", "nul-line2", "depth-40-line2", "fifo", "symlink-loop"),
         expect={"empty": "no prompts", "blank": "no prompts"}),
    Slot("loop eval_prompts=", lambda c, p: ["loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}",
                                               f"eval_prompts={p}"],
         good_prompt_lines, skip=("utf16", "nul-line2", "depth-40-line2", "fifo", "symlink-loop", "latin1-line2"),
         expect={"empty": "no prompts", "blank": "no prompts"}),
    Slot("eval understanding --vqa", lambda c, p: c.runs.und_args("-p", "vqa", "--vqa", p, "--out", c.runs.und),
         good_vqa_lines, expect={"empty": "no questions", "blank": "no questions"}),
    Slot("eval geneval --detections", lambda c, p: ["eval", "geneval", c.runs.render, "--detector", "precomputed",
                                                     "--detections", p, "--out", c.tmp / "ev"],
         good_detection_lines, expect={"empty": "do not match", "blank": "do not match"}),
    Slot("eval understanding --geneval-results",
         lambda c, p: c.runs.und_args("-p", "geneval_correct", "--images-dir", c.runs.render, "--geneval-results", p,
                                      "--out", c.tmp / "u"),
         good_results_rows, expect={"empty": "no row for", "blank": "no row for", "folder": "not found",
                                    "array-line2": "expected a JSON object",
                                    "string-line2": "expected a JSON object", "number-line2": "expected a JSON object",
                                    "null-line2": "expected a JSON object"}),
    Slot("eval geneval metadata.jsonl", lambda c, p: ["eval", "geneval", p, "--out", c.tmp / "ev"],
         lambda c: [c.metadata_line().encode() + b"\n"] * 2, place=_in_folder(lambda r: r.render, "00000/metadata.jsonl"),
         skip=("under-a-file",), expect={"empty": "expected exactly one metadata line", "blank": "expected exactly one",
                                         "missing": "missing", "folder": "missing", "fifo": "missing",
                                         "symlink-loop": "missing"} | ONE_LINE_ONLY),
    Slot("score metadata.jsonl", lambda c, p: ["score", p, "--reward", "geneval-partial", "progress=false"],
         lambda c: [c.metadata_line().encode() + b"\n"] * 2, place=_in_folder(lambda r: r.gen, "00000/metadata.jsonl"),
         skip=("under-a-file", "fifo", "symlink-loop", "utf16", "nul-line2", "depth-40-line2", "string-line2"),
         expect={"empty": "expected exactly one metadata line", "blank": "expected exactly one",
                 "missing": "missing", "folder": "missing"} | ONE_LINE_ONLY),
    Slot("eval geneval results.jsonl", lambda c, p: ["eval", "geneval", c.runs.render, "--out", p, "progress=false"],
         good_results_rows, place=_in_folder(lambda r: r.geneval, "results.jsonl"),
         skip=("empty", "blank", "missing", "under-a-file", "fifo", "symlink-loop", "bom-then-garbage"),
         expect={k: "corrupt row in the middle" for k in ("torn-line2", "nul-line2", "huge-int-line2",
                                                            "deep-array-line2", "deep-object-line2", "depth-40-line2")}
         | {"binary-utf8": "corrupt row", "array-line2": "expected a JSON object", "string-line2": "expected a JSON object",
            "number-line2": "expected a JSON object", "null-line2": "expected a JSON object"}),
    Slot("score scores.jsonl", lambda c, p: ["score", p, "--reward", "geneval-partial", "progress=false"],
         good_score_rows, place=_in_folder(lambda r: r.gen, "scores.jsonl"),
         skip=("empty", "blank", "missing", "under-a-file", "fifo", "symlink-loop", "bom-then-garbage", "utf16",
               "deep-array-line2", "null-line2"),
         expect={"torn-line2": "corrupt row", "nul-line2": "corrupt row", "huge-int-line2": "corrupt row",
                 "deep-object-line2": "corrupt row", "depth-40-line2": "corrupt row", "binary-utf8": "corrupt row",
                 "array-line2": "expected a JSON object", "string-line2": "expected a JSON object",
                 "number-line2": "expected a JSON object", "folder": "is a folder"}),
    Slot("train sft distill scores.jsonl",
         lambda c, p: c.runs.sft_args(f"prompts={c.runs.prompts}", "mode=distill", f"samples={p}", "keep_top=1",
                                      "rewards=[geneval-partial]", f"run.out={c.tmp / 'run'}"),  # its judge
         good_score_rows, place=_in_folder(lambda r: r.gen, "scores.jsonl"),
         skip=("empty", "blank", "under-a-file", "fifo", "symlink-loop", "utf16", "nul-line2", "deep-array-line2",
               "string-line2", "null-line2", "bom-then-garbage", "depth-40-line2"),
         expect={"missing": "no scores", "folder": "no scores", "array-line2": "expected a `unirl score` row",
                 "number-line2": "expected a `unirl score` row"}),
]
for _slot in SLOTS:
    add_slot(_slot)


# ---------------------------------------------------------------- metadata lines: wrong JSON types per field

def _meta(**change: Any) -> str:
    """A valid metadata line with fields replaced (a value of None removes the field)."""
    line = {"tag": "counting", "include": [{"class": "circle", "count": 2}],
            "exclude": [{"class": "circle", "count": 3}], "prompt": "a photo of two circles"}
    line.update(change)
    return json.dumps({k: v for k, v in line.items() if v is not None})


BAD_METADATA: dict[str, tuple[str, str]] = {  # id -> (line, what the error says)
    "tag-number": (_meta(tag=5), "field 'tag' must be a string"),
    "prompt-null": (json.dumps({"tag": "counting", "include": [{"class": "circle"}], "prompt": None}), "'prompt'"),
    "prompt-list": (_meta(prompt=["a", "b"]), "field 'prompt' must be a string"),
    "no-include": (_meta(include=None), "field 'include'"),
    "include-object": (_meta(include={"class": "circle"}), "field 'include' must be a non-empty list"),
    "include-empty": (_meta(include=[]), "field 'include' must be a non-empty list"),
    "include-string": (_meta(include=["circle"]), r"include\[0\]: expected an object"),
    "class-number": (_meta(include=[{"class": 3}]), "'class' must be a non-empty string"),
    "class-empty": (_meta(include=[{"class": ""}]), "'class' must be a non-empty string"),
    "count-string": (_meta(include=[{"class": "circle", "count": "two"}]), "'count' must be a positive integer"),
    "count-zero": (_meta(include=[{"class": "circle", "count": 0}]), "'count' must be a positive integer"),
    "count-negative": (_meta(include=[{"class": "circle", "count": -2}]), "'count' must be a positive integer"),
    "count-bool": (_meta(include=[{"class": "circle", "count": True}]), "'count' must be a positive integer"),
    "count-float": (_meta(include=[{"class": "circle", "count": 1.5}]), "'count' must be a positive integer"),
    "color-number": (_meta(include=[{"class": "circle", "color": 7}]), "'color' must be a string"),
    "position-relation": (_meta(include=[{"class": "circle"}, {"class": "square", "position": ["near", 0]}]),
                          "'position' must be"),
    "position-later-index": (_meta(include=[{"class": "circle", "position": ["left of", 5]}]), "'position' must be"),
    "position-in-exclude": (_meta(exclude=[{"class": "circle", "position": ["left of", 0]}]),
                            "'position' is only allowed in 'include'"),
    "exclude-string": (_meta(exclude="circle"), "field 'exclude' must be a list"),
    "question-number": (_meta(question=5), "field 'question' must be a string"),
    "unknown-requirement-field": (_meta(include=[{"class": "circle", "colour": "red"}]), "unknown field 'colour'"),
}


def _metadata_cases() -> None:
    """Each bad line through the three metadata readers: a prompt file, a training prompt file, and an
    images folder's metadata.jsonl."""
    for key, (line, expect) in BAD_METADATA.items():
        def gen(c: Ctx, line: str = line) -> Args:
            return c.runs.gen_args("--prompts", c.file("p.jsonl", c.metadata_line() + "\n" + line + "\n"),
                                   "--out", c.runs.gen)

        def grpo(c: Ctx, line: str = line) -> Args:
            return c.runs.grpo_args(f"prompts={c.file('p.jsonl', line + chr(10))}", f"run.out={c.tmp / 'run'}")

        def geneval(c: Ctx, line: str = line) -> Args:
            images = c.copy(c.runs.render, "images")
            (images / "00003" / "metadata.jsonl").write_text(line + "\n")
            return ["eval", "geneval", images, "--out", c.tmp / "ev"]

        CASES.append(Case(f"generate --prompts field[{key}]", gen, f"p.jsonl:2.*{expect}"))
        CASES.append(Case(f"train grpo prompts= field[{key}]", grpo, f"p.jsonl:1.*{expect}"))
        CASES.append(Case(f"eval geneval metadata field[{key}]", geneval, f"00003/metadata.jsonl:1.*{expect}"))


_metadata_cases()
CASES.append(Case("generate --prompts field[prompt-empty]", lambda c: c.runs.gen_args(
    "--prompts", c.file("p.jsonl", _meta(prompt="  ") + "\n"), "--out", c.runs.gen), "p.jsonl:1: field 'prompt' is empty"))
for _key, _req, _expect in (("class-unknown", {"class": "dragon"}, "class 'dragon' is unknown to detector"),
                            ("colour-unknown", {"class": "circle", "color": "mauve"}, "colour 'mauve' is unknown")):
    def _unknown_vocab(c: Ctx, req: dict = _req) -> Args:
        images = c.copy(c.runs.render, "images")
        (images / "00001" / "metadata.jsonl").write_text(_meta(tag="single_object", include=[req], exclude=None) + "\n")
        return ["eval", "geneval", images, "--out", c.tmp / "ev"]
    CASES.append(Case(f"eval geneval metadata field[{_key}]", _unknown_vocab, _expect))


# ---------------------------------------------------------------- rows of our own files, edited by hand

RESULT_ROWS = {  # the results.jsonl row's change -> what the error says
    "correct-string": ({"correct": "yes"}, "field 'correct' must be a bool"),
    "tag-missing": ({"tag": None}, "field 'tag' must be a str"),
    "filename-number": ({"filename": 7}, "field 'filename' must be a str"),
    "filename-list": ({"filename": ["a"]}, "field 'filename' must be a str"),
}
SCORE_ROWS = {
    "reward-string": ({"reward": "high"}, "field 'reward' must be an int or a float"),
    "reward-bool": ({"reward": True}, "field 'reward' must be an int or a float"),
    "prompt_index-float": ({"prompt_index": 1.5}, "field 'prompt_index' must be an int"),
    "rewards-list": ({"rewards": [1]}, "field 'rewards' must be a dict"),
    "filename-missing": ({"filename": None}, "field 'filename' must be a str"),
}


def _edited_row(path: Path, change: dict[str, Any]) -> None:
    """Line 1 of a JSONL file with fields replaced (None removes one)."""
    lines = path.read_text().splitlines()
    row = json.loads(lines[0])
    row.update(change)
    lines[0] = json.dumps({k: v for k, v in row.items() if v is not None})
    path.write_text("\n".join(lines) + "\n")


for _key, (_change, _expect) in RESULT_ROWS.items():
    def _results_row(c: Ctx, change: dict = _change) -> Args:
        out = c.copy(c.runs.geneval, "ev")
        _edited_row(out / "results.jsonl", change)
        return ["eval", "geneval", c.runs.render, "--out", out]

    def _geneval_results_row(c: Ctx, change: dict = _change) -> Args:
        out = c.copy(c.runs.geneval, "ev")
        _edited_row(out / "results.jsonl", change)
        return c.runs.und_args("-p", "geneval_correct", "--images-dir", c.runs.render, "--geneval-results", out,
                               "--out", c.tmp / "u")
    CASES.append(Case(f"eval geneval results row[{_key}]", _results_row, f"results.jsonl:1: {_expect}"))
    CASES.append(Case(f"eval understanding --geneval-results row[{_key}]", _geneval_results_row,
                      r"results.jsonl:1: (field|expected)|no row for|tag"))
for _key, (_change, _expect) in SCORE_ROWS.items():
    def _scores_row(c: Ctx, change: dict = _change) -> Args:
        gen = c.copy(c.runs.gen, "gen")
        _edited_row(gen / "scores.jsonl", change)
        return ["score", gen, "--reward", "geneval-partial", "progress=false"]
    CASES.append(Case(f"score scores row[{_key}]", _scores_row, f"scores.jsonl:1: {_expect}"))

BAD_VQA = {
    "image-missing": ({"image": "nope.png"}, "field 'image': .*nope.png not found"),
    "image-number": ({"image": 5}, "field 'image' must be a non-empty string"),
    "question-empty": ({"question": " "}, "field 'question' must be a non-empty string"),
    "answers-string": ({"answers": "purple"}, "field 'answers' must be a non-empty list"),
    "answers-empty": ({"answers": []}, "field 'answers' must be a non-empty list"),
    "answers-numbers": ({"answers": [1, 2]}, "field 'answers' must be a non-empty list"),
    "type-number": ({"type": 3}, "field 'type' must be a non-empty string"),
    "image-truncated": ({"image": "cut.png"}, "cut.png: unreadable image"),
    "image-huge": ({"image": "huge.png"}, "huge.png: image too large to decode"),
    "image-text": ({"image": "notes.png"}, "notes.png: unreadable image"),
}
for _key, (_change, _expect) in BAD_VQA.items():
    def _vqa(c: Ctx, change: dict = _change) -> Args:
        c.file("red.png", png_bytes())
        c.file("cut.png", png_bytes(32, 32)[:60])
        c.file("huge.png", huge_png_header())
        c.file("notes.png", "these are my notes\n")
        row = {"image": "red.png", "question": "What colour is it?", "answers": ["purple"], **change}
        return c.runs.und_args("-p", "vqa", "--vqa", c.file("vqa.jsonl", json.dumps(row) + "\n"), "--out", c.runs.und)
    CASES.append(Case(f"eval understanding --vqa row[{_key}]", _vqa, _expect))

BAD_DETECTIONS = {
    "no-filename": ({"filename": None}, r"expected \{\"filename\""),
    "detections-object": ({"detections": {"class": "circle"}}, "'detections' must be a list"),
    "box-short": ({"detections": [{"class": "circle", "box": [1, 2], "score": 0.9}]}, "box"),
    "box-strings": ({"detections": [{"class": "circle", "box": ["a", 0, 1, 1], "score": 0.9}]}, "box"),
    "score-string": ({"detections": [{"class": "circle", "box": [0, 0, 4, 4], "score": "high"}]}, "score"),
    "mask-escapes": ({"detections": [{"class": "circle", "box": [0, 0, 4, 4], "score": 0.9, "mask": "../../x.png"}]},
                     "outside the detections file's folder"),
    "mask-absolute": ({"detections": [{"class": "circle", "box": [0, 0, 4, 4], "score": 0.9, "mask": "/etc/passwd"}]},
                      "outside the detections file's folder"),
    "mask-rle-garbage": ({"detections": [{"class": "circle", "box": [0, 0, 4, 4], "score": 0.9,
                                          "mask": {"size": [8], "counts": 5}}]}, "mask"),
}
for _key, (_change, _expect) in BAD_DETECTIONS.items():
    def _detections(c: Ctx, change: dict = _change, key: str = _key) -> Args:
        rows = [{"filename": f"{i:05d}/samples/0000.png", "detections": []} for i in range(6)]
        rows[1] = {k: v for k, v in {**rows[1], **change}.items() if v is not None}
        if key == "duplicate-line":
            rows.append(rows[0])
        path = c.file("dets.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return ["eval", "geneval", c.runs.render, "--detector", "precomputed", "--detections", path, "--out", c.tmp / "ev"]
    CASES.append(Case(f"eval geneval --detections row[{_key}]", _detections, f"dets.jsonl:2.*{_expect}"))
CASES.append(Case("eval geneval --detections row[duplicate-line]", lambda c: [
    "eval", "geneval", c.runs.render, "--detector", "precomputed", "--out", c.tmp / "ev", "--detections",
    c.file("dets.jsonl", "".join(json.dumps({"filename": f"{i % 6:05d}/samples/0000.png", "detections": []}) + "\n"
                                 for i in range(7)))], "dets.jsonl:7: second line for '00000/samples/0000.png'"))


# ---------------------------------------------------------------- images folders: layout and image files

def _images_dir_cases(cmd: str, build: Callable[[Ctx, Path], Args], source: Callable[[Runs], Path]) -> None:
    """A GenEval images folder that is no such folder, or holds bad images."""
    folder_faults: dict[str, tuple[Callable[[Ctx], Path], str]] = {
        "missing": (lambda c: c.tmp / "nope", "not a folder"),
        "a-file": (lambda c: c.file("images.txt", "x"), "not a folder"),
        "empty-folder": (lambda c: c.bad_path("folder", "empty"), "no prompt folders"),
        "no-samples": (lambda c: _without(c, source, "00002/samples"), "no images named like 0000.png"),
        "no-metadata": (lambda c: _without(c, source, "00002/metadata.jsonl"), "00002/metadata.jsonl: missing"),
    }
    image_faults: dict[str, tuple[bytes | Callable[[], bytes], str]] = {
        "truncated-png": (lambda: png_bytes(32, 32)[:70], "0000.png: unreadable image"),
        "zero-byte-png": (b"", "0000.png: unreadable image"),
        "huge-png-header": (huge_png_header, "0000.png: image too large to decode"),
        "wide-png-header": (lambda: huge_png_header(5000, 4000), "0000.png: image of 5000x4000"),
        "text-as-png": (b"not an image\n", "0000.png: unreadable image"),
        "jpeg-as-png": (lambda: _jpeg(), "0000.png: is JPEG, not PNG"),
        "garbage-png": (GARBAGE, "0000.png: unreadable image"),
    }
    for key, (make, expect) in folder_faults.items():
        CASES.append(Case(f"{cmd} IMAGES_DIR[{key}]", lambda c, make=make: build(c, make(c)), expect))
    for key, (data, expect) in image_faults.items():
        def bad_image(c: Ctx, data: bytes | Callable[[], bytes] = data) -> Args:
            folder = c.copy(source(c.runs), "images")
            (folder / "00004" / "samples" / "0000.png").write_bytes(data() if callable(data) else data)
            return build(c, folder)
        CASES.append(Case(f"{cmd} IMAGES_DIR[{key}]", bad_image, expect))


def _without(c: Ctx, source: Callable[[Runs], Path], rel: str) -> Path:
    folder = c.copy(source(c.runs), "images")
    target = folder / rel
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return folder


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return buf.getvalue()


_images_dir_cases("eval geneval", lambda c, p: ["eval", "geneval", p, "--out", c.tmp / "ev"], lambda r: r.render)
_images_dir_cases("score", lambda c, p: ["score", p, "--reward", "geneval-partial", "--out", c.tmp / "s.jsonl"],
                  lambda r: r.gen)
_images_dir_cases("eval understanding geneval_correct",
                  lambda c, p: c.runs.und_args("-p", "geneval_correct", "--images-dir", p, "--geneval-results",
                                               c.runs.geneval, "--out", c.tmp / "u"), lambda r: r.render)


# ---------------------------------------------------------------- model folders and tokens files

def _model_copy(c: Ctx) -> Path:
    """A copy of the tiny model to damage."""
    return c.copy(c.runs.model, "model")


MODEL_FAULTS: dict[str, tuple[Callable[[Ctx], Path], str]] = {
    "missing": (lambda c: c.tmp / "nope", "no such folder"),
    "a-file": (lambda c: c.file("model.bin", "x"), "no such folder"),
    "empty-folder": (lambda c: c.bad_path("folder", "empty"), "incomplete checkpoint, missing"),
    "garbage-weights": (lambda c: _damaged_weights(c, GARBAGE), "not a readable safetensors file"),
    "truncated-weights": (lambda c: _damaged_weights(c, None), "not a readable safetensors file"),
    "empty-weights": (lambda c: _damaged_weights(c, b""), "not a readable safetensors file"),
    "no-weights": (lambda c: _without_file(c, "model.safetensors"), "missing model.safetensors"),
    "config-not-json": (lambda c: _damaged_file(c, "config.json", b"{model_type: janus"), "config.json: malformed JSON"),
    "config-not-utf8": (lambda c: _damaged_file(c, "config.json", b'{"model_type": "jan\xffus"}'),
                        "config.json:1: not UTF-8"),
    "config-not-object": (lambda c: _damaged_file(c, "config.json", b'["janus"]'), "config.json: not a JSON object"),
    "index-not-utf8": (lambda c: _damaged_file(c, "model.safetensors.index.json", b'{"weight_map": "\xff"}'),
                       "model.safetensors.index.json:1: not UTF-8"),
    "config-other-model": (lambda c: _damaged_file(c, "config.json", b'{"model_type": "llama"}'),
                           "model_type is 'llama'"),
}


def _damaged_weights(c: Ctx, data: bytes | None) -> Path:
    """The model copy with its weights replaced by `data`, or cut to a third (None)."""
    model = _model_copy(c)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3] if data is None else data)
    return model


def _damaged_file(c: Ctx, name: str, data: bytes) -> Path:
    model = _model_copy(c)
    (model / name).write_bytes(data)
    return model


def _without_file(c: Ctx, name: str) -> Path:
    model = _model_copy(c)
    (model / name).unlink()
    return model


for _key, (_make, _expect) in MODEL_FAULTS.items():
    CASES.append(Case(f"generate --model[{_key}]", lambda c, m=_make: [
        "generate", "--backbone", "janus", "--model", m(c), "--prompts", c.runs.prompts, "--out", c.tmp / "g",
        "--group-size", "2", "backbone.device=cpu", "progress=false"], _expect))
    CASES.append(Case(f"eval understanding --model[{_key}]", lambda c, m=_make: [
        "eval", "understanding", "-p", "clean", "--backbone", "janus", "--model", m(c), "--out", c.tmp / "u",
        "per_tag=1", "--device", "cpu"], _expect))
    CASES.append(Case(f"train grpo backbone.model=[{_key}]", lambda c, m=_make: c.runs.grpo_args(
        f"prompts={c.runs.prompts}", f"backbone.model={m(c)}", f"run.out={c.tmp / 'run'}"), _expect))
for _key in ("garbage-weights", "truncated-weights", "missing", "config-not-json"):
    _make, _expect = MODEL_FAULTS[_key]
    CASES.append(Case(f"serve reward --model[{_key}]", lambda c, m=_make: [
        "serve", "reward", "--reward", "self-qa", "--backbone", "janus", "--model", m(c), "--device", "cpu",
        "--port", "0"], _expect))
    CASES.append(Case(f"score --model[{_key}]", lambda c, m=_make: [
        "score", c.runs.gen, "--reward", "self-qa", "--backbone", "janus", "--model", m(c), "--out",
        c.tmp / "s.jsonl", "backbone.device=cpu"], _expect))
    CASES.append(Case(f"loop backbone.model=[{_key}]", lambda c, m=_make: [
        "loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}", f"backbone.model={m(c)}"], _expect))


def _damaged_tokens(c: Ctx, data: bytes | None) -> Path:
    """A copy of the generated folder whose prompt 3 has a damaged tokens.safetensors."""
    gen = c.copy(c.runs.gen, "gen")
    tokens = gen / "00003" / "tokens.safetensors"
    tokens.write_bytes(tokens.read_bytes()[:100] if data is None else data)
    return gen


for _key, _data in (("garbage", GARBAGE), ("truncated", None), ("empty", b""), ("json", b'{"tokens": [1, 2]}')):
    CASES.append(Case(f"generate resume tokens.safetensors[{_key}]", lambda c, d=_data: c.runs.gen_args(
        "--prompts", c.runs.prompts, "--out", _damaged_tokens(c, d)), "00003/tokens.safetensors: not a readable"))
    CASES.append(Case(f"score tokens.safetensors[{_key}]", lambda c, d=_data: [
        "score", _damaged_tokens(c, d), "--reward", "geneval-partial", "--out", c.tmp / "s.jsonl"],
        "00003/tokens.safetensors: not a readable"))
def _distinct_rewards(gen: Path) -> Path:
    """Scores that differ within each prompt (tied groups are skipped, their tokens never read)."""
    rows = [json.loads(ln) for ln in (gen / "scores.jsonl").read_text().splitlines()]
    (gen / "scores.jsonl").write_text("".join(json.dumps({**r, "reward": float(r["image_index"])}) + "\n" for r in rows))
    return gen


CASES.append(Case("train sft distill tokens.safetensors[garbage]", lambda c: c.runs.sft_args(
    f"prompts={c.runs.prompts}", "mode=distill", f"samples={_distinct_rewards(_damaged_tokens(c, GARBAGE))}",
    "keep_top=1", "rewards=[geneval-partial]", f"run.out={c.tmp / 'run'}"), "tokens.safetensors: not a readable"))


# ---------------------------------------------------------------- config files and overrides, every command

def _command_lines(c: Ctx) -> dict[str, Args]:
    """A valid command line per command (before the config and overrides of a case)."""
    r = c.runs
    return {
        "prompts": ["prompts", "--out", r.prompts],
        "render": ["render", r.prompts, "--out", r.render],
        "generate": r.gen_args("--prompts", r.prompts, "--out", r.gen),
        "score": ["score", r.gen, "--reward", "geneval-partial"],
        "eval geneval": ["eval", "geneval", r.render, "--out", r.geneval],
        "eval understanding": r.und_args("-p", "clean", "--out", r.und),
        "train grpo": r.grpo_args(f"prompts={r.prompts}", f"run.out={c.tmp / 'run'}"),
        "train sft": r.sft_args(f"prompts={r.prompts}", f"run.out={c.tmp / 'run'}"),
        "loop": ["loop", f"out={c.tmp / 'loop'}"],
        "pretrain": ["pretrain", f"out={c.tmp / 'pre'}", *PRETRAIN_TINY],
    }


# A number-valued key of each command's config, for the unknown-key and wrong-type cases.
KEY = {"prompts": "seed", "render": "seed", "generate": "seed", "score": "batch_size", "eval geneval": "batch_size",
       "eval understanding": "batch_size", "train grpo": "group_size", "train sft": "group_size", "loop": "seed",
       "pretrain": "seed"}
CONFIG_FAULTS: dict[str, tuple[bytes | None, str]] = {  # the --config file's content (None: a path kind)
    "missing": (None, "config file not found"),
    "folder": (None, "is a folder"),
    "garbage": (GARBAGE, "not UTF-8"),
    "latin1": ("seed: 1\n# caf\xe9\n".encode("latin-1"), ":2: not UTF-8"),
    "bad-yaml": (b"seed: [1, 2\n", "not valid YAML"),
    "tabs-yaml": (b"seed:\n\t- 1\n", "not valid YAML"),
    "list-top": (b"- seed\n- 1\n", "expected a mapping of keys at the top level"),
    "scalar-top": (b"just text\n", "expected a mapping of keys at the top level"),
    "unknown-key": (b"KEYx: 1\n", r"unknown key 'KEYx' \(did you mean 'KEY'\?\)"),
    "deep-yaml": (b"seed: " + b"[" * 1500 + b"]" * 1500 + b"\n", "nested too deeply"),  # past the recursion limit
    "nul": (b"seed: 1\x00\n", "not valid YAML"),
}
OVERRIDE_FAULTS: dict[str, tuple[str, str]] = {  # KEY stands for the command's key
    "no-equals": ("KEY", "expected key=value"),
    "empty-key": ("=3", "expected key=value"),
    "empty-part": ("a..b=1", "expected key=value"),
    "unknown": ("KEYx=3", r"unknown key 'KEYx' \(did you mean 'KEY'\?\)"),
    "wrong-type": ("KEY=abc", "KEY: expected int"),
    "list-for-int": ("KEY=[1, 2]", "KEY: expected int"),
    "value-then-key": ("KEY.x=1", "KEY: expected int|'KEY' was already given a value"),
}


def _with_config(command: str, kind: str) -> Callable[[Ctx], Args]:
    def build(c: Ctx) -> Args:
        data, _ = CONFIG_FAULTS[kind]
        data = data.replace(b"KEY", KEY[command].encode()) if data is not None else None
        path = c.file("bad.yaml", data) if data is not None else c.bad_path(kind, "bad.yaml")
        line = _command_lines(c)[command]
        return [*line[:_command_width(line)], "--config", path, *line[_command_width(line):]]
    return build


def _command_width(line: Args) -> int:
    """How many leading words name the command (`eval geneval`, `train grpo`, `prompts`)."""
    return 2 if line[0] in ("eval", "train") else 1


for _command in ("prompts", "render", "generate", "score", "eval geneval", "eval understanding", "train grpo",
                 "train sft", "loop", "pretrain"):
    for _kind in CONFIG_FAULTS:
        if _command not in ("prompts", "train grpo", "loop") and _kind not in ("garbage", "unknown-key", "bad-yaml"):
            continue  # every fault on three commands, the commonest on the rest: one reader serves them all
        CASES.append(Case(f"{_command} --config[{_kind}]", _with_config(_command, _kind),
                          CONFIG_FAULTS[_kind][1].replace("KEY", KEY[_command]), names=lambda c: "bad.yaml"))
    for _kind, (_override, _expect) in OVERRIDE_FAULTS.items():
        if _command not in ("prompts", "generate", "train sft") and _kind not in ("unknown", "wrong-type", "no-equals"):
            continue
        CASES.append(Case(f"{_command} override[{_kind}]",
                          lambda c, cmd=_command, o=_override.replace("KEY", KEY[_command]): [*_command_lines(c)[cmd], o],
                          _expect.replace("KEY", KEY[_command])))


# ---------------------------------------------------------------- options: out of range, not finite, unknown names

cases("prompts option", r"--n|--seed|Invalid value|must be|expected", lambda c, v: ["prompts", *v.split(), "--out", c.runs.prompts],
      ["--n 0", "--n -5", "--n abc", "--n 1e3", "--n nan", "--seed -1", "--seed abc"])
cases("prompts option", r"world|shares|question|style|unknown|expected|must be", lambda c, v: [
    "prompts", *v.split(), "--out", c.runs.prompts],
    ["--world mars", "--shares position=abc", "--shares position", "--shares bogus_tag=1", "--shares position=nan",
     "--shares position=-1", "--question-style bogus"])
cases("prompts --out", r"is a folder|not a folder|needs --out", lambda c, v: ["prompts", *{
    "folder": ["--out", c.runs.root], "under-a-file": ["--out", c.runs.prompts / "x.jsonl"], "none": []}[v]],
    ["folder", "under-a-file", "none"])
cases("render option", r"images_per_prompt|size|error|must be|expected|not one of", lambda c, v: [
    "render", c.runs.prompts, "--out", c.tmp / "r", *v.split()],
    ["--images-per-prompt 0", "--images-per-prompt -1", "--size 0", "--size -64", "--size 7", "--size 100000",
     "--seed -1", "--error bogus", "size=nan"])
cases("render --out", r"is a file|not a folder|needs PROMPTS", lambda c, v: {
    "a-file": ["render", c.runs.prompts, "--out", c.runs.prompts], "none": ["render", c.runs.prompts],
    "no-prompts": ["render", "--out", c.tmp / "r"]}[v], ["a-file", "none", "no-prompts"])
cases("render into another prompt set", "holds another prompt", lambda c, v: [
    "render", c.file("other.jsonl", c.metadata_line(int(v)) + "\n"), "--out", c.runs.render], ["3"])
cases("generate option", r"backbone|did you mean|unknown|must be|expected|device|dtype|group_size|batch_size|"
      r"cfg_scale|temperature|top_k|top_p|seed|not",
      lambda c, v: [*c.runs.gen_args("--prompts", c.runs.prompts, "--out", c.tmp / "g"), *v.split()],
      ["--group-size 0", "--group-size -1", "--batch-size 0", "--seed -1", "sampling.cfg_scale=nan",
       "sampling.cfg_scale=-1", "sampling.cfg_scale=inf", "sampling.temperature=-1", "sampling.temperature=nan",
       "sampling.top_k=0", "sampling.top_k=-1", "sampling.top_p=0", "sampling.top_p=1.5", "sampling.top_p=nan",
       "backbone.device=tpu", "backbone.dtype=int8", "--backbone janua", "--backbone bogus",
       "backbone.options.bogus=1", "backbone.fsdp=true", "backbone.gradient_checkpointing=true", "sampling=3",
       "backbone.nme=janus"])
cases("generate --out", r"is a file|not a folder", lambda c, v: c.runs.gen_args(
    "--prompts", c.runs.prompts, "--out", {"a-file": c.runs.prompts, "under-a-file": c.runs.prompts / "g"}[v]),
    ["a-file", "under-a-file"])
cases("generate resume with other settings", r"holds images made with", lambda c, v: c.runs.gen_args(
    "--prompts", c.runs.prompts, "--out", c.runs.gen, v), ["seed=5", "sampling.temperature=0.5", "sampling.top_k=3"])
cases("score option", r"reward|did you mean|unknown|given twice|weight|batch_size|must be|expected|not among|folder|"
      r"backbone",
      lambda c, v: ["score", c.runs.gen, *v.split(), "--out", c.tmp / "s.jsonl"],
      ["--reward bogus", "--reward geneval-partail", "--reward geneval-partial:nan", "--reward geneval-partial:abc",
       "--reward geneval-partial:inf", "--reward geneval-partial --reward geneval-partial", "--batch-size 0",
       "--reward geneval-partial reward_options.geneval.threshold=1",
       "--reward geneval-partial reward_options.geneval-partial.bogus=1", "--reward self-qa backbone.fsdp=true",
       "--reward self-qa backbone.name=janua", "--reward self-qa backbone=3"])
cases("score --out", r"is a folder|not a folder|is a file", lambda c, v: [
    "score", c.runs.gen, "--reward", "geneval-partial", "--out",
    {"folder": c.runs.root, "under-a-file": c.runs.prompts / "s.jsonl"}[v]], ["folder", "under-a-file"])
cases("score resume with other rewards", "holds scores made with", lambda c, v: ["score", c.runs.gen, *v.split()],
      ["--reward geneval", "--reward geneval-partial:0.5"])
cases("score scores.rewards.json", r"scores.rewards.json", lambda c, v: [
    "score", _damaged_header(c, v), "--reward", "geneval-partial"], ["garbage", "latin1", "list", "deep"])
cases("eval geneval option", r"detector|did you mean|unknown|batch_size|must be|expected|colour|color|--detections|"
      r"threshold|rules",
      lambda c, v: ["eval", "geneval", c.runs.render, "--out", c.tmp / "ev", *v.split()],
      ["--detector bogus", "--detector shape", "--detector precomputed", "--detections x.jsonl",
       "--batch-size 0", "--batch-size -3", "--color-classifier bogus", "rules.threshold=nan", "rules.threshold=-1",
       "rules.max_objects=0", "rules.tresh=1", "detector_options.bogus=1"])
cases("eval geneval --out", r"is a file|not a folder|needs IMAGES_DIR", lambda c, v: {
    "a-file": ["eval", "geneval", c.runs.render, "--out", c.runs.prompts], "none": ["eval", "geneval", c.runs.render],
    "no-images": ["eval", "geneval", "--out", c.tmp / "ev"]}[v], ["a-file", "none", "no-images"])
cases("eval geneval resume with other judges", "holds results made with", lambda c, v: [
    "eval", "geneval", c.runs.render, "--out", c.runs.geneval, v], ["rules.threshold=0.5", "rules.max_objects=3"])
cases("eval geneval pixel limit", r"UNIRL_MAX_IMAGE_PIXELS|exceeds the limit", lambda c, v: _with_env(
    c, "UNIRL_MAX_IMAGE_PIXELS", v, ["eval", "geneval", c.runs.render, "--out", c.tmp / "ev"]),
    ["abc", "-5", "0", "100"])
cases("eval understanding option", r"protocol|did you mean|unknown|needs|must be|expected|per_tag|batch_size|pope|"
      r"backbone|dtype",
      lambda c, v: c.runs.und_args(*v.split(), "--out", c.tmp / "u"),
      ["-p pop", "-p bogus", "-p vqa", "-p geneval_correct", "-p clean --batch-size 0", "-p clean per_tag=0",
       "-p clean per_tag=-1", "-p clean max_new_tokens=0", "-p pope pope.strategy=bogus", "-p clean bogus=1",
       "-p clean backbone.dtype=int8", "-p clean backbone.gradient_checkpointing=true", "-p clean backbone.bogus=1"])
cases("eval understanding --out", r"is a file|not a folder|needs --out", lambda c, v: c.runs.und_args(
    "-p", "clean", *{"a-file": ["--out", c.runs.prompts], "none": []}[v]), ["a-file", "none"])


def _damaged_header(c: Ctx, kind: str) -> Path:
    """A copy of the scored folder whose reward header (scores.rewards.json) is damaged."""
    gen = c.copy(c.runs.gen, "gen")
    data = {"garbage": GARBAGE, "latin1": b'{"rewards": "caf\xe9"}', "list": b"[1, 2]\n",
            "deep": DEEP_ARRAY.encode()}[kind]
    (gen / "scores.rewards.json").write_bytes(data)
    return gen


def _with_env(c: Ctx, name: str, value: str, args: Args) -> Args:
    c.monkeypatch.setenv(name, value)
    return args


TRAIN_OPTIONS = ["run.steps=-1", "run.steps=abc", "group_size=1", "group_size=0", "prompts_per_step=0",
                 "optim.lr=nan", "optim.lr=-1", "optim.lr=inf", "optim.grad_clip=nan", "optim.micro_batch=0",
                 "sampling.temperature=-1", "sampling.temperature=nan", "sampling.cfg_scale=nan", "sampling.top_p=2",
                 "run.log_every=0", "run.checkpoint_every=0", "run.seed=-1", "rewards=[bogus]",
                 "rewards=[geneval-partial:nan]", "backbone.name=bogus", "backbone.device=tpu", "optim.lrr=1",
                 "optim=3", "lora.enabled=true lora.r=0"]
cases("train grpo option", r".", lambda c, v: c.runs.grpo_args(f"prompts={c.runs.prompts}", f"run.out={c.tmp / 'r'}",
                                                                *v.split()),
      [*TRAIN_OPTIONS, "beta=nan", "beta=-1", "epsilon=nan", "epsilon=-0.1", "num_iterations=0", "loss_type=bogus",
       "target=bogus", "scale_rewards=bogus"])
cases("train sft option", r".", lambda c, v: c.runs.sft_args(f"prompts={c.runs.prompts}", f"run.out={c.tmp / 'r'}",
                                                              *v.split()),
      [*TRAIN_OPTIONS[:2], *TRAIN_OPTIONS[3:8], "mode=bogus", "mode=gen-rs", "mode=gen-rs threshold=nan", "mode=gen-rs keep_top=-1",
       "mode=gen-rs keep_top=2", "mode=e2e gumbel_tau=0", "mode=e2e gumbel_tau=nan", "mode=distill",
       "mode=distill keep_top=1 samples=/nonexistent", "samples=/tmp"])
cases("train grpo run.out", r"is a file|not a folder|already holds checkpoints", lambda c, v: c.runs.grpo_args(
    f"prompts={c.runs.prompts}", f"run.out={ {'a-file': c.runs.prompts, 'under-a-file': c.runs.prompts / 'r', 'finished': c.runs.grpo}[v]}"),
    ["a-file", "under-a-file", "finished"])
cases("train sft run.out", r"is a file|not a folder|already holds checkpoints", lambda c, v: c.runs.sft_args(
    f"prompts={c.runs.prompts}", f"run.out={ {'a-file': c.runs.prompts, 'finished': c.runs.sft}[v]}"),
    ["a-file", "finished"])
cases("train grpo --resume with other settings", r"other settings|already reached step|written by", lambda c, v: [
    *c.runs.grpo_args(f"prompts={c.runs.prompts}", f"run.out={c.runs.grpo}", "run.steps=2", "run.checkpoint_every=1",
                      *v.split()), "--resume"],
    ["optim.lr=0.5", "group_size=4", "beta=0.1", "run.steps=1", "lora.enabled=true"])
cases("train sft --resume with other settings", r"other settings|already reached step|written by", lambda c, v: [
    *c.runs.sft_args(f"prompts={c.runs.prompts}", f"run.out={c.runs.sft}", "run.steps=1", *v.split()), "--resume"],
    ["optim.lr=0.5", "mode=e2e"])


def _torn_checkpoints(c: Ctx, how: str) -> Path:
    """A copy of the finished GRPO run whose every checkpoint is unreadable in one way."""
    run = c.copy(c.runs.grpo, "run")
    for ckpt in sorted((run / "checkpoints").iterdir()):
        if how == "weights-cut":
            weights = ckpt / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:200])
        elif how == "weights-missing":
            (ckpt / "model.safetensors").unlink()
        elif how == "state-json-garbage":
            (ckpt / "state.json").write_bytes(GARBAGE)
        elif how == "state-json-missing":
            (ckpt / "state.json").unlink()
        elif how == "state-tensors-empty":
            (ckpt / "state.safetensors").write_bytes(b"")
        elif how == "state-json-deep":
            (ckpt / "state.json").write_text(DEEP_ARRAY)
        elif how == "pickled":
            (ckpt / "state.json").unlink()
            (ckpt / "state.pt").write_bytes(b"\x80\x04K\x01.")
    return run


cases("train grpo --resume checkpoints", r"no readable checkpoint|--trust-pickle", lambda c, v: [
    *c.runs.grpo_args(f"prompts={c.runs.prompts}", f"run.out={_torn_checkpoints(c, v)}", "run.steps=3",
                      "run.checkpoint_every=1"), "--resume"],
    ["weights-cut", "weights-missing", "state-json-garbage", "state-json-missing", "state-tensors-empty",
     "state-json-deep", "pickled"])

cases("loop option", r".", lambda c, v: ["loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}", *v.split()],
      ["rounds=-1", "rounds=abc", "train=bogus", "n_eval=0", "n_train=0", "eval_group_size=0", "batch_size=0",
       "understanding=[bogus]", "rewards=[bogus]", "detector=bogus", "world=mars", "train_shares.position=-1",
       "train_shares.bogus=1", "grpo_config=/nonexistent.yaml", "grpo_overrides=[optim.lrr=1]",
       "grpo_overrides=[optim.lr=nan]", "grpo_overrides=[noequals]", "train=sft sft_overrides=[mode=bogus]",
       "backbone.name=bogus", "backbone.device=tpu", "understanding_per_tag=0"])
cases("loop grpo_config", r"grpo_config|bad.yaml", lambda c, v: [
    "loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}", f"grpo_config={c.file('bad.yaml', v)}"],
    ["optim: [1, 2\n", "optim:\n  lrr: 1\n", "- a list\n"])
LATIN1_YAML = "# caf\xe9\n".encode("latin-1")
cases("loop grpo_config", r"not UTF-8", lambda c, v: [
    "loop", "--config", c.runs.loop_yaml, f"out={c.tmp / 'loop'}",
    f"grpo_config={c.file('bad.yaml', LATIN1_YAML)}"], ["latin1"])
cases("loop out", r"is a file|not a folder|other settings", lambda c, v: [
    "loop", "--config", c.runs.loop_yaml, *{"a-file": [f"out={c.runs.prompts}"],
                                            "other-settings": [f"out={c.runs.loop}", "n_eval=4"],
                                            "other-rewards": [f"out={c.runs.loop}", "rewards=[geneval-partial]"]}[v]],
    ["a-file", "other-settings", "other-rewards"])


def _damaged_marker(c: Ctx, data: bytes) -> Path:
    """A copy of the finished loop whose round-1 eval marker is damaged (a rerun reads it)."""
    loop = c.copy(c.runs.loop, "loop")
    (loop / "round-001" / "eval.done.json").write_bytes(data)
    return loop


MARKERS = {"latin1": b'{"seconds": caf\xe9}', "utf16": b"\xff\xfe{", "deep": DEEP_ARRAY.encode(), "list": b"[1]"}
cases("loop stage marker", r"eval.done.json", lambda c, v: [
    "loop", "--config", c.runs.loop_yaml, f"out={_damaged_marker(c, MARKERS[v])}"], list(MARKERS))

cases("pretrain option", r".", lambda c, v: ["pretrain", f"out={c.tmp / 'pre'}", *PRETRAIN_TINY, *v.split()],
      ["stages=[bogus]", "tokenizer.steps=-1", "tokenizer.lr=nan", "tokenizer.lr=-1", "tokenizer.batch_size=0",
       "tokenizer.image_size=0", "tokenizer.image_size=63", "tokenizer.base_channels=8", "tokenizer.bogus=1", "seed=-1",
       "gate.threshold=nan",
       "vision.steps=-1"])
cases("pretrain out", r"is a file|not a folder", lambda c, v: ["pretrain", f"out={c.runs.prompts}"], ["a-file"])


def _damaged_pretrain(c: Ctx, what: str) -> Path:
    pre = c.copy(c.runs.pre, "pre")
    if what == "log-latin1":
        (pre / "tokenizer" / "log.jsonl").write_bytes(b'{"step": 1, "x": "caf\xe9"}\n')
    elif what in ("checkpoints-torn", "checkpoints-garbage-state"):
        for ckpt in (pre / "tokenizer" / "checkpoints").iterdir():
            name = "model.safetensors" if what == "checkpoints-torn" else "state.json"
            (ckpt / name).write_bytes(GARBAGE[:64])
    elif what in ("gate-garbage", "gate-list", "gate-latin1"):
        (pre / "tokenizer" / "gate.json").write_bytes({"gate-garbage": GARBAGE, "gate-list": b"[true]",
                                                       "gate-latin1": b'{"passed": "s\xed"}'}[what])
    return pre


cases("pretrain resume", r"not UTF-8|no readable checkpoint|gate.json", lambda c, v: [
    "pretrain", f"out={_damaged_pretrain(c, v)}",
    *([p for p in PRETRAIN_TINY if not p.startswith("stages")] + ["stages=[lm]"] if v.startswith("gate") else
      PRETRAIN_TINY)],
    ["log-latin1", "checkpoints-torn", "checkpoints-garbage-state", "gate-garbage", "gate-list", "gate-latin1"])

cases("serve reward option", r".", lambda c, v: ["serve", "reward", *v.split()],
      ["--reward bogus", "--reward self-q", "--reward geneval-partial:2", "--reward geneval-partial --port -1",
       "--reward geneval-partial --port 70000", "--reward geneval-partial --port abc",
       "--reward geneval-partial bogus=1", "--reward geneval-partial =1", "--reward geneval-partial noequals",
       "--reward geneval-partial --model /tmp", "--reward geneval-partial backbone.options.x=1",
       "--reward geneval-partial reward_options=3", "--reward self-qa --backbone bogus", "--reward geneval-partial --host nosuch.invalid",
       "--reward geneval-partial --host 256.1.1.1", "--reward geneval-partial --device tpu --backbone janus",
       "", "--reward"])
cases("serve reward port in use", "cannot listen", lambda c, v: ["serve", "reward", "--reward", "geneval-partial",
                                                                 "--port", str(_busy_port(c))], ["busy"])


def _busy_port(c: Ctx) -> int:
    """A port this test holds open, so the server cannot bind it."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    c.monkeypatch.setattr(c, "held_socket", sock, raising=False)
    return sock.getsockname()[1]


cases("plugins", r"plugins", lambda c, v: ["plugins", *v.split()], ["--bogus", "extra", "--help-me"])
cases("unirl", r"unirl", lambda c, v: v.split(), ["nosuch", "--bogus", "eval nosuch", "train bogus", "serve nosuch"])
cases("convert mmdet-mask2former", r".", lambda c, v: ["convert", "mmdet-mask2former", *{
    "missing": [c.tmp / "nope.pth", "--out", c.tmp / "o"], "garbage": [c.file("g.pth", GARBAGE), "--out", c.tmp / "o"],
    "empty": [c.file("e.pth", b""), "--out", c.tmp / "o"], "folder": [c.runs.root, "--out", c.tmp / "o"],
    "no-out": [c.file("g.pth", GARBAGE)], "out-a-file": [c.file("g.pth", GARBAGE), "--out", c.runs.prompts]}[v]],
      ["missing", "garbage", "empty", "folder", "no-out", "out-a-file"])


# ---------------------------------------------------------------- faults: a full disk on every writing command

DISK_FULL = r"the disk is full .*rerun the same command"
cases("disk full", DISK_FULL, lambda c, v: _disk_full(c, v), [
    "prompts", "render", "generate", "score", "eval geneval", "eval understanding", "train grpo", "train sft",
    "pretrain", "loop"])


def _disk_full(c: Ctx, command: str) -> Args:
    """`command` on fresh outputs with the first write of its results failing with ENOSPC."""
    r = c.runs
    target, args = {
        "prompts": ("unirl_kit.prompts.cmd.write_prompts", ["prompts", "--out", c.tmp / "p.jsonl"]),
        "render": ("unirl_kit.worlds.shapes.dataset.save_png_atomic", ["render", r.prompts, "--out", c.tmp / "r"]),
        "generate": ("unirl_kit.generation.outputs.save_png_atomic",
                     r.gen_args("--prompts", r.prompts, "--out", c.tmp / "g")),
        "score": ("unirl_kit.jsonl.ResumableJsonl.append",
                  ["score", r.gen, "--reward", "geneval-partial", "--out", c.tmp / "s.jsonl"]),
        "eval geneval": ("unirl_kit.jsonl.ResumableJsonl.append", ["eval", "geneval", r.render, "--out", c.tmp / "ev"]),
        "eval understanding": ("unirl_kit.eval.understanding.runner.write_atomic",
                               r.und_args("-p", "clean", "--out", c.tmp / "u")),
        "train grpo": ("unirl_kit.checkpoint.save_file",
                       r.grpo_args(f"prompts={r.prompts}", f"run.out={c.tmp / 'run'}", "run.steps=1")),
        "train sft": ("unirl_kit.checkpoint.save_file",
                      r.sft_args(f"prompts={r.prompts}", f"run.out={c.tmp / 'run'}", "run.steps=1")),
        "pretrain": ("unirl_kit.checkpoint.save_file", ["pretrain", f"out={c.tmp / 'pre'}", *PRETRAIN_TINY]),
        "loop": ("unirl_kit.jsonl.write_atomic", ["loop", "--config", r.loop_yaml, f"out={c.tmp / 'loop'}"]),
    }[command]
    c.disk_full(target)
    return args


def test_safetensors_disk_full_is_the_disk_full_line(runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """safetensors reports ENOSPC as its own error with the OS error's text: still the disk-full line."""
    from safetensors import SafetensorError

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("unirl_kit.checkpoint.save_file", full)
    result = invoke(*runs.grpo_args(f"prompts={runs.prompts}", f"run.out={tmp_path / 'run'}", "run.steps=1"))
    assert result.exit_code == 2 and type(result.exception) is SystemExit, result.exception
    assert re.fullmatch(f"error: {DISK_FULL}.*", result.stderr.strip()), result.stderr


# ---------------------------------------------------------------- the table, run

# Entries known to fail still, with who fixes them (strict: one that passes must leave this list).
KNOWN_FAILURES: dict[str, str] = {}


def _params() -> list[Any]:
    marks = {i: [pytest.mark.xfail(strict=True, reason=r)] for i, r in KNOWN_FAILURES.items()}
    return [pytest.param(c, id=c.id, marks=marks.get(c.id, [])) for c in CASES]


def test_the_catalogue_is_large_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 200 and len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]


@pytest.mark.parametrize("bad", _params())
def test_bad_input_is_one_line_and_changes_nothing(bad: Case, runs: Runs, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Ctx(runs, tmp_path / "bad", monkeypatch)
    ctx.tmp.mkdir()
    monkeypatch.setattr("unirl_kit.rewards.server.RewardServer.serve_forever", _never_serve)
    args = bad.build(ctx)
    before = snapshot(runs.root, ctx.tmp)
    result = invoke(*args)
    after = snapshot(runs.root, ctx.tmp)
    assert type(result.exception) is SystemExit, f"{type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert re.search(bad.expect, lines[0]), lines[0]
    if bad.names is not None:
        assert bad.names(ctx) in lines[0], lines[0]
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"changed or removed: {changed[:5]}"


def _never_serve(self: Any) -> None:
    """A case the server accepted would serve forever; fail it instead."""
    raise AssertionError("accepted: the reward server started")


# ---------------------------------------------------------------- what is accepted now: BOM files, a torn newest checkpoint

def test_a_bom_prefixed_jsonl_is_read_as_jsonl(runs: Runs, tmp_path: Path) -> None:
    """A metadata JSONL saved with a byte-order mark is the same file to every reader (it was read as
    plain-text prompts whose first prompt began with the BOM and a brace)."""
    from unirl_kit.generation.prompts import read_prompt_file
    from unirl_kit.prompts.schema import read_prompts

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(BOM + runs.prompts.read_bytes())
    assert read_prompt_file(bom) == read_prompt_file(runs.prompts)
    assert read_prompts(bom) == read_prompts(runs.prompts)
    images = shutil.copytree(runs.render, tmp_path / "images")
    meta = images / "00000" / "metadata.jsonl"
    meta.write_bytes(BOM + meta.read_bytes())
    result = invoke("eval", "geneval", images, "--out", tmp_path / "ev", "progress=false")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "ev" / "summary.json").read_text()) == json.loads(
        (runs.geneval / "summary.json").read_text())
    result = invoke("prompts", "--n", "4", "--exclude", bom, "--out", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.stderr


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_one(runs: Runs, tmp_path: Path) -> None:
    """The newest checkpoint cut short (a half copy): the resume warns in one line naming it and goes on
    from the one before, which it trains again from."""
    run = shutil.copytree(runs.grpo, tmp_path / "run")
    weights = run / "checkpoints" / "step-0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = invoke(*runs.grpo_args(f"prompts={runs.prompts}", f"run.out={run}", "run.steps=3",
                                    "run.checkpoint_every=1", "--resume"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "step-0000002" in warnings[0] and "step-0000001" in warnings[0], result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["started_at"] == 1 and summary["steps"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-0000003"


def test_a_torn_newest_tokenizer_checkpoint_falls_back_too(runs: Runs, tmp_path: Path) -> None:
    """The pre-training stages resume through the same reader."""
    pre = shutil.copytree(runs.pre, tmp_path / "pre")
    (pre / "tokenizer" / "checkpoints" / "step-0000002" / "state.json").write_text("{torn")
    result = invoke("pretrain", f"out={pre}", *[p.replace("steps=2", "steps=3") for p in PRETRAIN_TINY])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "resuming from the previous good checkpoint" in result.stderr and "step-0000001" in result.stderr


# ---------------------------------------------------------------- property tests: readers raise InputError or nothing

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["tag", "prompt", "include", "exclude", "class", "count", "color", "position", "question",
                         "answer", "image", "answers", "type", "filename", "detections", "box", "score", "x"]),
        inner, max_size=6),
    max_leaves=20)
LINES = st.lists(st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=40)), max_size=5).map("\n".join)
FILES = st.one_of(st.binary(max_size=600), LINES.map(str.encode), st.sampled_from(
    [GARBAGE, BINARY_UTF8, BOM + b'{"a": 1}\n', DEEP_ARRAY.encode(), DEPTH_40.encode(), HUGE_INT.encode()]))


def _only_input_errors(read: Callable[[Path], Any], path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        read(path)
    except InputError as exc:
        assert "\n" not in str(exc)


@PROPERTY
@given(data=FILES)
def test_jsonl_reader_raises_only_input_errors(tmp_path: Path, data: bytes) -> None:
    from unirl_kit.jsonl import read_jsonl

    _only_input_errors(read_jsonl, tmp_path / "f.jsonl", data)


@PROPERTY
@given(data=FILES)
def test_prompt_readers_raise_only_input_errors(tmp_path: Path, data: bytes) -> None:
    from unirl_kit.generation.prompts import read_prompt_file
    from unirl_kit.prompts.schema import read_prompts

    _only_input_errors(read_prompt_file, tmp_path / "p.jsonl", data)
    _only_input_errors(read_prompts, tmp_path / "p.jsonl", data)


@PROPERTY
@given(line=JSON_VALUES)
def test_metadata_parsing_of_any_json_raises_only_input_errors(line: Any) -> None:
    from unirl_kit.prompts.schema import parse_spec

    try:
        spec = parse_spec(line, "f:1")
    except InputError:
        return
    assert spec.to_json()["prompt"] == line["prompt"]


@PROPERTY
@given(data=FILES)
def test_images_folder_metadata_raises_only_input_errors(tmp_path: Path, data: bytes) -> None:
    from unirl_kit.eval.geneval.layout import scan_images

    samples = tmp_path / "images" / "00000" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (samples / "0000.png").write_bytes(png_bytes())
    _only_input_errors(lambda p: scan_images(p.parent.parent), samples.parent / "metadata.jsonl", data)


@PROPERTY
@given(data=FILES)
def test_resumable_jsonl_raises_only_input_errors(tmp_path: Path, data: bytes) -> None:
    from unirl_kit.eval.geneval.runner import RESULT_FIELDS
    from unirl_kit.jsonl import ResumableJsonl

    _only_input_errors(lambda p: ResumableJsonl(p, lambda row: row["filename"], RESULT_FIELDS),
                       tmp_path / "results.jsonl", data)


@PROPERTY
@given(data=FILES)
def test_vqa_and_detection_readers_raise_only_input_errors(tmp_path: Path, data: bytes) -> None:
    from unirl_kit.eval.geneval.detectors.precomputed import PrecomputedDetector
    from unirl_kit.eval.understanding.vqa import read_vqa

    _only_input_errors(read_vqa, tmp_path / "vqa.jsonl", data)
    _only_input_errors(lambda p: PrecomputedDetector(str(p)), tmp_path / "dets.jsonl", data)


@PROPERTY
@given(data=st.binary(max_size=300) | LINES.map(str.encode))
def test_reward_request_parsing_raises_only_input_errors(data: bytes) -> None:
    from unirl_kit.rewards.wire import decode_samples, loads

    try:
        decode_samples(loads(data), 1 << 20)
    except InputError as exc:
        assert "\n" not in str(exc)
