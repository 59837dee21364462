"""DiffAugment (color, translation, resize, cutout) with its randomness as an explicit input.

The reference draws its random numbers inside the op; here every copy gets 8 numbers u ~ U[0, 1)
from the host, so the same function runs in torch, in an exported graph and in an engine, and one
seed gives one image everywhere. Spatial ops are written as per-copy matrices built from u
(out = M_h @ x @ M_w^T), which export as MatMul instead of the gather/ScatterND of index-based code.

u layout per copy (AUG_DIM = 8, tr0n_rt/graphs.py):
    0 brightness  x + (u - 0.5)                       (in [-1, 1] space, as the reference)
    1 saturation  (x - mean_c) * 2u + mean_c
    2 contrast    (x - mean_chw) * (u + 0.5) + mean_chw
    3, 4          translation of rows / columns by floor(u (2s + 1)) - s pixels, s = int(H * ratio + 0.5)
    5             resize by r = lo + (hi - lo) u: bilinear to int(r H), then centre pad / crop to H
    6, 7          cutout square of side int(H * ratio + 0.5) centred at floor(u (H + 1 - side % 2))
Fills are 0 (grey). u = IDENTITY_AUG leaves the image unchanged (up to rounding): that is how
"no augmentation" runs through the same graphs (one copy of identity noise).
Deviation from the reference: its resize ratio is one per batch; here it is one per copy, so a batch
of prompts draws the same augmentations as one prompt at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

POLICY = ("color", "translation", "resize", "cutout")


@dataclass(frozen=True)
class AugmentConfig:
    """What DiffAugment does to each copy; how many copies (A) is a sampling setting."""

    policy: tuple[str, ...] = POLICY
    translation_ratio: float = 0.125
    resize_range: tuple[float, float] = (0.8, 1.2)
    cutout_ratio: float = 0.5

    def __post_init__(self):
        unknown = set(self.policy) - set(POLICY)
        if unknown:
            from tr0n_rt.errors import ConfigError

            raise ConfigError(f"unknown augmentation(s) {sorted(unknown)}; known: {', '.join(POLICY)}")


def color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W], u [N, 8] -> brightness, saturation, contrast as in DiffAugment."""
    x = x + (u[:, 0] - 0.5)[:, None, None, None]
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (2.0 * u[:, 1])[:, None, None, None] + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u[:, 2] + 0.5)[:, None, None, None] + m


def shift_matrix(u: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """u [N] -> T [N, size, size] with (T x)[i] = x[i + shift], zero outside; shift in [-s, s]."""
    s = int(size * ratio + 0.5)
    shift = torch.floor(u * (2 * s + 1)) - s  # [N]
    idx = torch.arange(size, dtype=u.dtype, device=u.device)
    return (idx[None, None, :] == idx[None, :, None] + shift[:, None, None]).to(u.dtype)


def resize_matrix(u: torch.Tensor, size: int, lo: float, hi: float) -> torch.Tensor:
    """u [N] -> R [N, size, size]: bilinear resize to n = int(r size) (align_corners=False, no
    antialias, as F.interpolate), then centre zero-pad (n < size) or centre crop (n > size)."""
    n = torch.floor((lo + (hi - lo) * u) * size)  # [N] resized side, pixels
    gap = size - n
    offset = torch.sign(gap) * torch.floor(gap.abs() / 2)  # trunc((size - n) / 2): pad left / -crop start
    i = torch.arange(size, dtype=u.dtype, device=u.device)
    p = i[None, :] - offset[:, None]  # [N, size] pixel index in the resized image
    valid = ((p >= 0) & (p < n[:, None])).to(u.dtype)
    src = ((p + 0.5) * (size / n)[:, None] - 0.5).clamp(0, size - 1)  # source coordinate
    tent = torch.relu(1 - (src[:, :, None] - i[None, None, :]).abs())  # [N, size(out), size(in)]
    return tent * valid[:, :, None]


def cutout_mask(u_row: torch.Tensor, u_col: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """u_row, u_col [N] -> mask [N, 1, size, size], 0 inside the square, 1 outside."""
    side = int(size * ratio + 0.5)
    i = torch.arange(size, dtype=u_row.dtype, device=u_row.device)

    def inside(u):
        start = torch.floor(u * (size + 1 - side % 2)) - side // 2
        return ((i[None, :] >= start[:, None]) & (i[None, :] < start[:, None] + side)).to(u.dtype)

    return (1 - inside(u_row)[:, :, None] * inside(u_col)[:, None, :])[:, None]


def diff_augment(x: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """x [N, C, H, W] (H == W), u [N, AUG_DIM] -> augmented [N, C, H, W]."""
    size = x.shape[-1]
    if "color" in cfg.policy:
        x = color(x, u)
    rows = cols = None  # per-copy spatial matrices, composed so x is multiplied once
    if "translation" in cfg.policy:
        rows = shift_matrix(u[:, 3], size, cfg.translation_ratio)
        cols = shift_matrix(u[:, 4], size, cfg.translation_ratio)
    if "resize" in cfg.policy:
        r = resize_matrix(u[:, 5], size, *cfg.resize_range)
        rows = r if rows is None else r @ rows
        cols = r if cols is None else r @ cols
    if rows is not None:
        x = rows[:, None] @ x @ cols[:, None].transpose(-1, -2)
    if "cutout" in cfg.policy:
        x = x * cutout_mask(u[:, 6], u[:, 7], size, cfg.cutout_ratio)
    return x
