"""Image reads are bounded and their failures are one line: the pixel limit checked from the header
(every reader: GenEval layout, VQA, reward wire, loop figures, precomputed masks and RLE), PIL's own
errors turned into InputError, and precomputed mask paths kept inside their file's folder."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unirl_kit.eval.geneval.detectors.precomputed import PrecomputedDetector, decode_rle
from unirl_kit.eval.geneval.layout import load_image
from unirl_kit.eval.understanding.vqa import _load as load_vqa_image
from unirl_kit.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels, open_image
from unirl_kit.loop.sheets import _grid_columns
from unirl_kit.rewards.wire import decode_image
from unirl_kit.types import InputError

# PIL warns from 89 Mpx inside Image.open; the toolkit silences that at import, pytest resets filters per test
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

SHAPES_PROMPT = {"tag": "single_object", "include": [{"class": "hourglass", "count": 1}],
                 "prompt": "a photo of a hourglass"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_bytes(width: int = 12000, height: int = 12000) -> bytes:
    """A 1-bit PNG whose header claims width x height: a few hundred bytes, the size of the
    450 KB file that took `eval geneval` to 24 GB (its pixel data never needs to exist)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def write_huge_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(huge_png_bytes(width, height))
    return path


def small_png(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 255 if mode == "L" else (10, 20, 30)).save(path, format="PNG")
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ---- the helper ----

def test_oversized_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_huge_png(tmp_path / "big.png")
    with pytest.raises(InputError) as err:
        open_image(path, mode="RGB")
    text = one_line(err)
    assert str(path) in text and "12000x12000" in text and f"{DEFAULT_MAX_PIXELS:,}" in text
    assert MAX_PIXELS_ENV in text


def test_limit_from_the_environment_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_png(tmp_path / "a.png", (32, 24))
    assert open_image(path, mode="RGB").size == (32, 24)
    monkeypatch.setenv(MAX_PIXELS_ENV, "700")
    assert max_pixels() == 700
    with pytest.raises(InputError, match=r"32x24 = 768 pixels exceeds the limit of 700 pixels"):
        open_image(path)
    assert open_image(path, limit=768).size == (32, 24)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=rf"{MAX_PIXELS_ENV}='lots': expected a positive pixel count"):
        open_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")
    with pytest.raises(InputError, match=MAX_PIXELS_ENV):
        max_pixels()


def test_pil_bomb_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PIL's own cap (179 Mpx) Image.open refuses before our check can run."""
    monkeypatch.setenv(MAX_PIXELS_ENV, str(10**12))
    path = write_huge_png(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(InputError) as err:
        open_image(path)
    assert str(path) in one_line(err) and "too large" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "folder"])
def test_unreadable_files_are_one_line(tmp_path: Path, damage: str) -> None:
    path = small_png(tmp_path / "x.png", (64, 64))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(InputError) as err:
        open_image(path, mode="RGB")
    assert one_line(err).startswith(f"{path}: unreadable image")
    assert "0x" not in str(err.value)  # not PIL's "<_io.BytesIO object at 0x...>"


def test_bytes_png_only_and_modes(tmp_path: Path) -> None:
    path = small_png(tmp_path / "l.png", (8, 4), mode="L")
    assert open_image(path.read_bytes(), "req").mode == "L"  # mode kept unless asked
    assert open_image(path, mode="RGB").mode == "RGB"
    jpeg = tmp_path / "j.png"
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    with pytest.raises(InputError, match=r"is JPEG, not PNG"):
        open_image(jpeg, png_only=True)
    assert open_image(jpeg).size == (8, 8)


# ---- every reader uses it ----

def test_geneval_layout_refuses_oversized_image(tmp_path: Path) -> None:
    write_huge_png(tmp_path / "00000" / "samples" / "0000.png")
    with pytest.raises(InputError, match="12000x12000"):
        load_image(tmp_path, "00000/samples/0000.png")


def test_eval_geneval_cli_exits_2_with_one_line(tmp_path: Path, unirl_cli) -> None:
    """The console script, so stderr is exactly what a user sees (no PIL warning line either)."""
    images = tmp_path / "images"
    (images / "00000").mkdir(parents=True)
    (images / "00000" / "metadata.jsonl").write_text(json.dumps(SHAPES_PROMPT) + "\n")
    big = write_huge_png(images / "00000" / "samples" / "0000.png")
    proc = unirl_cli("eval", "geneval", images, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(big) in lines[0], proc.stderr
    assert "12000x12000" in lines[0]


def test_vqa_reader_refuses_oversized_image(tmp_path: Path) -> None:
    path = write_huge_png(tmp_path / "imgs" / "1.png")
    with pytest.raises(InputError, match="12000x12000"):
        load_vqa_image(path)


def test_wire_refuses_oversized_image() -> None:
    text = base64.b64encode(huge_png_bytes()).decode("ascii")
    with pytest.raises(InputError, match=r"request.samples\[0\].image_png: image of 12000x12000"):
        decode_image(text, "request.samples[0].image_png")


def test_loop_figures_skip_an_oversized_grid(tmp_path: Path) -> None:
    small_png(tmp_path / "r0" / "samples" / "00000" / "grid.png")
    write_huge_png(tmp_path / "r1" / "samples" / "00000" / "grid.png")
    ((_, _, images),) = _grid_columns(tmp_path, ["r0", "r1"], 4)
    assert images[0].size == (32, 24) and images[1] is None


# ---- precomputed detections: mask PNGs, RLE sizes, paths ----

def _detections(path: Path, mask: object) -> Path:
    det = {"class": "bench", "box": [0, 0, 5, 5], "score": 0.9, "mask": mask}
    path.write_text("\n" + json.dumps({"filename": "00000/samples/0000.png", "detections": [det]}) + "\n")
    return path


def test_precomputed_mask_png_over_the_limit(tmp_path: Path) -> None:
    write_huge_png(tmp_path / "masks" / "m.png")
    path = _detections(tmp_path / "det.jsonl", "masks/m.png")
    with pytest.raises(InputError) as err:
        PrecomputedDetector(str(path))
    assert one_line(err).startswith(f"{path}:2 detections[0]: mask PNG") and "12000x12000" in str(err.value)


def test_precomputed_rle_size_over_the_limit(tmp_path: Path) -> None:
    path = _detections(tmp_path / "det.jsonl", {"size": [100000, 100000], "counts": [10**10]})
    with pytest.raises(InputError, match=rf"{path}:2 detections\[0\]: RLE mask: image of 100000x100000"):
        PrecomputedDetector(str(path))
    with pytest.raises(InputError, match="negative"):
        decode_rle({"size": [-4, 4], "counts": [0]})


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_precomputed_mask_paths_stay_in_the_file_folder(tmp_path: Path, where: str) -> None:
    outside = small_png(tmp_path / "secret.png", (6, 6), mode="L")
    folder = tmp_path / "dets"
    folder.mkdir()
    if where == "parent":
        mask = "../secret.png"
    elif where == "absolute":
        mask = str(outside)
    else:
        (folder / "link.png").symlink_to(outside)
        mask = "link.png"
    path = _detections(folder / "det.jsonl", mask)
    with pytest.raises(InputError) as err:
        PrecomputedDetector(str(path))
    text = one_line(err)
    assert text.startswith(f"{path}:2 detections[0]: mask path {mask!r}") and "outside" in text


def test_precomputed_masks_are_decoded_only_when_their_image_is_detected(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a file of many masked images decodes none of them (memory would grow with the file);
    detecting one image decodes that image's masks only, and gives them as before."""
    import unirl_kit.eval.geneval.detectors.precomputed as precomputed

    decoded: list[str] = []
    real_rle, real_open = precomputed.decode_rle, precomputed.open_image
    monkeypatch.setattr(precomputed, "decode_rle", lambda rle, where="": decoded.append(where) or real_rle(rle, where))
    monkeypatch.setattr(precomputed, "open_image", lambda *a, **k: decoded.append(a[1]) or real_open(*a, **k))
    small_png(tmp_path / "masks" / "m.png", (6, 4), mode="L")
    rle = {"size": [4, 6], "counts": [3, 18, 3]}
    lines = [{"filename": f"{i:05d}/samples/0000.png", "detections": [
        {"class": "cat", "box": [0, 0, 5, 5], "score": 0.9, "mask": rle},
        {"class": "dog", "box": [0, 0, 5, 5], "score": 0.8, "mask": "masks/m.png"}]} for i in range(300)]
    path = tmp_path / "det.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    detector = PrecomputedDetector(str(path))
    assert decoded == []
    (dets,) = detector.detect([Image.new("RGB", (6, 4))], ["00007/samples/0000.png"])
    assert len(decoded) == 2 and all(f"{path}:8 detections" in w for w in decoded)
    assert dets[0].mask.sum() == 18 and np.all(dets[1].mask)
    assert detector._by_file["00008/samples/0000.png"][0].det.mask is None  # nothing kept once detected


def test_precomputed_bad_rle_counts_fail_when_the_file_is_read(tmp_path: Path) -> None:
    """Checked up front without decoding: a bad file still fails before any work."""
    for counts, says in (([3, -1, 22], "non-negative integers"), ([3, 1.5], "non-negative integers"),
                         ("0", "counts add up to"), ("P", "string index out of range")):
        path = _detections(tmp_path / "det.jsonl", {"size": [4, 6], "counts": counts})
        with pytest.raises(InputError, match=rf"{path}:2 detections\[0\]: bad RLE mask.*{says}"):
            PrecomputedDetector(str(path))


def test_precomputed_mask_paths_inside_are_read(tmp_path: Path) -> None:
    small_png(tmp_path / "masks" / "m.png", (6, 4), mode="L")
    path = _detections(tmp_path / "det.jsonl", "masks/../masks/m.png")
    (dets,) = PrecomputedDetector(str(path)).detect([Image.new("RGB", (6, 4))], ["00000/samples/0000.png"])
    assert dets[0].mask.shape == (4, 6) and np.all(dets[0].mask)
    with pytest.raises(InputError, match="bad mask path"):
        PrecomputedDetector(str(_detections(tmp_path / "nul.jsonl", "m\x00.png")))
