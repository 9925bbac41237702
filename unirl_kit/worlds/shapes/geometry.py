"""Rasterising the shapes: one function used by the renderer and, as templates, by the detector.

Every shape, sampled at pixel centres of an odd-sized square box (the only boxes the renderer draws), touches all four sides of that box and
is 8-connected, so a clean render's connected component has exactly the box it was drawn in and
the detector's template in that box reproduces it pixel for pixel (IoU 1.0).
"""

from __future__ import annotations

import numpy as np


def unit_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which normalised points (u, v in [0, 1], v down) lie inside `shape` drawn in the unit box."""
    du, dv = u - 0.5, v - 0.5
    if shape == "circle":
        return du * du + dv * dv <= 0.25
    if shape == "square":
        return np.ones(u.shape, dtype=bool)
    if shape == "triangle":  # apex at the top centre, base along the bottom
        return np.abs(du) <= v / 2
    if shape == "diamond":
        return np.abs(du) + np.abs(dv) <= 0.5
    if shape == "cross":
        return (np.abs(du) <= 1 / 6) | (np.abs(dv) <= 1 / 6)
    if shape == "hourglass":  # two triangles meeting in a waist a fifth of the side wide
        return np.abs(du) <= np.abs(dv) * 0.8 + 0.1
    raise ValueError(f"unknown shape {shape!r}")


def box_mask(shape: str, width: int, height: int) -> np.ndarray:
    """The shape sampled at pixel centres of a width x height box."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return unit_mask(shape, (u + 0.5) / width, (v + 0.5) / height)


def place_mask(shape: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Full-image mask (H, W) of `shape` drawn in integer box [x1, y1, x2, y2), x2/y2 exclusive."""
    x1, y1, x2, y2 = box
    out = np.zeros((size[1], size[0]), dtype=bool)
    out[y1:y2, x1:x2] = box_mask(shape, x2 - x1, y2 - y1)
    return out
