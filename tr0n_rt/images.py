"""Images out: [-1, 1] float arrays -> PNG files and captioned grids (numpy + Pillow only)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .atomic import write_bytes


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """image [C, H, W] in [-1, 1] (C = 1 or 3) -> RGB PIL image, upscaled by `scale` (nearest)."""
    x = np.clip((image + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    pil = Image.fromarray(x.transpose(1, 2, 0), "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def png_bytes(pil: Image.Image) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    write_bytes(path, png_bytes(to_pil(image, scale)))


def display_scale(size: int) -> int:
    """Upscale factor so small images are readable: at least 128 px."""
    return max(1, 128 // size)


def grid(images: np.ndarray, captions: list[str], columns: int) -> Image.Image:
    """images [N, C, H, W] in [-1, 1] + one caption each -> one captioned RGB grid."""
    n, _, h, _ = images.shape
    scale = display_scale(h)
    cell, text_h = h * scale, 14
    rows = -(-n // columns)
    longest = max((len(c) for c in captions), default=0)
    cw = max(cell, min(6 * longest + 4, 2 * cell))  # Pillow's default font: ~6 px a character
    sheet = Image.new("RGB", (columns * cw, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(i, columns)
        sheet.paste(to_pil(img, scale), (c * cw, r * (cell + text_h) + text_h))
        draw.text((c * cw + 2, r * (cell + text_h) + 1), cap[: max(4, cw // 6)], fill="black")
    return sheet
