"""The shapes world's vocabulary and constants.

Why these choices: 64x64 images keep a tiny model's token grid small (16x16 tokens at 4x
downsampling); six shapes whose masks overlap little (template IoU <= 0.82 between any two at the
odd sides >= 11 px drawn at 64 px; circle/square is the closest pair); six of GenEval's colours
chosen far apart in RGB (>= 120 pairwise) and >= 100 from the mid-grey background, so blur and
colour noise of generated images do not flip them.
"""

from __future__ import annotations

IMAGE_SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "hourglass")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (96, 96, 96)
MAX_COUNT = 4
# Object side lengths in pixels at IMAGE_SIZE (scaled for other sizes): lone objects may be large.
SIZE_SINGLE = (17, 29)  # odd sides only: see geometry.py
SIZE_MULTI = (13, 21)
MIN_GAP = 2  # pixels between objects, so same-coloured neighbours never merge into one component
