"""Semantic interpolation between two conditions (the reference's interpolation evaluators).

CLIP embeddings are interpolated on the sphere (slerp), as the reference does between two images'
embeddings; class distributions linearly (a mixture of the two classes). t = 0 and t = 1 give the two
conditions themselves, so a strip's ends are ordinary samples of its endpoints.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, ShapeError


def slerp(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """c0, c1 [d], t [n] in [0, 1] -> [n, d]: sin((1-t) w)/sin w c0 + sin(t w)/sin w c1, with w the angle
    between c0 and c1 (their norms are kept, as the reference's _slerp); linear when w ~ 0."""
    c0, c1 = np.asarray(c0, np.float64), np.asarray(c1, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    cos = np.clip(c0 @ c1 / max(np.linalg.norm(c0) * np.linalg.norm(c1), 1e-30), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return ((1 - t) * c0 + t * c1).astype(np.float32)
    return ((np.sin((1 - t) * omega) * c0 + np.sin(t * omega) * c1) / np.sin(omega)).astype(np.float32)


MAX_POINTS = 10_000  # points of one interpolation: each is sampled, so more is a mistake, not a strip


def check_points(n) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ConfigError(f"--interpolate needs at least 2 points (the two endpoints), got {str(n)[:100]}")
    if n > MAX_POINTS:
        raise ConfigError(f"--interpolate takes at most {MAX_POINTS:,} points, got {n:,}: give fewer")


def interpolate(c0: np.ndarray, c1: np.ndarray, n: int, kind: str) -> np.ndarray:
    """2 <= n <= MAX_POINTS conditions from c0 to c1 (endpoints included): [n, d]. kind: "text" or "image" (CLIP
    embeddings, slerp) or "class" (class distributions, linear)."""
    check_points(n)
    if np.shape(c0) != np.shape(c1) or np.ndim(c0) != 1:
        raise ShapeError(f"endpoints have shapes {np.shape(c0)} and {np.shape(c1)}; give two conditions of one size")
    t = np.linspace(0.0, 1.0, n)
    if kind == "class":
        out = ((1 - t)[:, None] * c0 + t[:, None] * c1).astype(np.float32)
    else:
        out = slerp(c0, c1, t)
    out[0], out[-1] = c0, c1  # the endpoints bit for bit (no rounding through float64 trigonometry)
    return out


@dataclass
class Interpolation:
    """N conditions from one endpoint to the other, as `tr0n-rt sample --interpolate N` lays them out."""

    endpoints: list  # the two labels (prompts, classes or image files)
    t: list[float]  # [N] from 0 to 1
    labels: list[str]  # [N] "A -> B @ t"
    conditions: np.ndarray  # [N, d_c]
    judged: list  # [N] what each point is judged against: the endpoints' queries at t = 0 and 1, else None


def interpolation(labels: list, conditions: np.ndarray, judged: list | None, n: int, kind: str) -> Interpolation:
    """Two endpoints (labels, conditions [2, d_c], their judged queries or None) -> n points between them."""
    if len(labels) != 2:
        raise ConfigError(f"--interpolate takes exactly two endpoints (two prompts, classes or images), got {len(labels)}")
    check_points(n)  # before the n labels are built
    t = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    ends = judged or [None, None]
    return Interpolation(list(labels), t, [f"{labels[0]} -> {labels[1]} @ {x:.2f}" for x in t],
                         interpolate(conditions[0], conditions[1], n, kind), [ends[0]] + [None] * (n - 2) + [ends[1]])


def strip_cells(order_t: list[tuple[int, float]], images: list, captions: list, samples: int, sources=None):
    """One strip per sample j: [source image,] t = 0 ... t = 1 [, source image]. order_t: (sample j, t) per
    image; sources: the two endpoint images [C, H, W] in [-1, 1] (image interpolation) -> (cells, captions,
    columns)."""
    order = sorted(range(len(order_t)), key=lambda r: order_t[r])
    cells, caps = [], []
    for j in range(samples):
        row = [r for r in order if order_t[r][0] == j]
        ends = (([sources[0]], ["source"]), ([sources[1]], ["source"])) if sources is not None else (([], []), ([], []))
        cells += ends[0][0] + [images[r] for r in row] + ends[1][0]
        caps += ends[0][1] + [captions[r] for r in row] + ends[1][1]
    return cells, caps, len(cells) // samples
