"""Images out: [-1, 1] float arrays -> PNG files and captioned grids (numpy + Pillow only).

Limits (checked on sizes before anything is allocated):
  MAX_OUTPUT_PIXELS  an image from to_pil, or a grid sheet, holds at most 64 Mi pixels (8192 x 8192, 192 MiB as
                     RGB). to_pil refuses a larger upscale; grid drops its display upscale, then shows its cells
                     smaller (the image files keep their size), and refuses only when cells would fall below 8 px.
  MAX_IMAGE_PIXELS   an image used as a condition holds at most 64 Mi pixels, read from its header before decoding.
  MAX_ASPECT         ... and its longer side is at most 64 x its shorter: the shorter side is resized to S, so the
                     resize's intermediate image is at most 64 S x S (a 3,000,000 x 1 strip would be 672 M x 224).
"""
from __future__ import annotations

import io
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAX_OUTPUT_PIXELS = 8192 * 8192
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_ASPECT = 64


def _shape(x) -> str:
    return str(list(np.shape(x)))[:100]


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """image [C, H, W] in [-1, 1] (C = 1 or 3) -> RGB PIL image, upscaled by `scale` (nearest), at most
    MAX_OUTPUT_PIXELS in all."""
    from .errors import ShapeError

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3) or image.dtype.kind not in "fiub":
        raise ShapeError(f"an image must be numbers [C, H, W] with C = 1 or 3, got {image.dtype} {_shape(image)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ShapeError(f"scale must be a whole number >= 1, got {str(scale)[:100]}")
    _, h, w = image.shape
    if h * w * int(scale) ** 2 > MAX_OUTPUT_PIXELS:
        raise ShapeError(f"a {w} x {h} image upscaled {scale} x would be {w * scale:,} x {h * scale:,} pixels, more "
                         f"than {MAX_OUTPUT_PIXELS:,}: use a smaller scale")
    x = np.clip((image + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    pil = Image.fromarray(x.transpose(1, 2, 0), "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def png_bytes(pil: Image.Image) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def display_scale(size: int) -> int:
    """Upscale factor so small images are readable: at least 128 px."""
    return max(1, 128 // size)


def grid(images: np.ndarray, captions: list[str], columns: int) -> Image.Image:
    """images [N, C, H, W] in [-1, 1] + one caption each -> one captioned RGB grid of at most MAX_OUTPUT_PIXELS:
    small images are upscaled for display (display_scale) only while the sheet stays within it, and a sheet
    too large even so shows its cells reduced by a whole factor (the image files keep their size)."""
    from .errors import ShapeError

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape[2:]:
        raise ShapeError(f"grid takes images [N, C, H, W] with C = 1 or 3, got {_shape(images)}")
    if isinstance(columns, bool) or not isinstance(columns, numbers.Integral) or columns < 1:
        raise ShapeError(f"columns must be a whole number >= 1, got {str(columns)[:100]}")
    n, _, h, w = images.shape
    text_h = 14
    rows = -(-n // columns)
    longest = max((len(c) for c in captions), default=0)

    def layout(scale: int, reduce: int) -> tuple[int, int, int, int]:
        cell_h, cell_w = -(-h * scale // reduce), -(-w * scale // reduce)
        cw = max(cell_w, min(6 * longest + 4, 2 * cell_w))  # Pillow's default font: ~6 px a character
        return cell_h, cw, columns * cw, rows * (cell_h + text_h)

    def too_large(scale: int, reduce: int) -> bool:
        _, _, width, height = layout(scale, reduce)
        return width * height > MAX_OUTPUT_PIXELS

    scale, reduce = display_scale(h), 1
    if too_large(scale, 1):
        scale = 1
    while too_large(scale, reduce):
        reduce += 1
        if min(h, w) // reduce < 8:
            raise ShapeError(f"a grid of {n:,} images of {w} x {h} in {columns} columns would exceed "
                             f"{MAX_OUTPUT_PIXELS:,} pixels even with 8 px cells: give fewer images per grid")
    cell, cw, width, height = layout(scale, reduce)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(i, columns)
        pil = to_pil(img, scale)
        sheet.paste(pil.reduce(reduce) if reduce > 1 else pil, (c * cw, r * (cell + text_h) + text_h))
        draw.text((c * cw + 2, r * (cell + text_h) + 1), cap[: max(4, cw // 6)], fill="black")
    return sheet


# --- images in: a user's image as the CLIP image encoder's input ----------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_files(path: str | Path) -> list[Path]:
    """A file, or every image file of a folder (sorted by name)."""
    from .errors import PromptError

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise PromptError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise PromptError(f"image {path} does not exist: give an image file or a folder of images")
    return [path]


def _check_geometry(w: int, h: int, name) -> None:
    """Refuses an image whose decode or resize would be unbounded: MAX_IMAGE_PIXELS, MAX_ASPECT."""
    from .errors import PromptError

    if w < 1 or h < 1:
        raise PromptError(f"image {name} is empty ({w} x {h} pixels)")
    if w * h > MAX_IMAGE_PIXELS:
        raise PromptError(f"image {name} is {w:,} x {h:,} = {w * h / 1e6:.1f} megapixels, more than "
                          f"{MAX_IMAGE_PIXELS / 1e6:.1f}: downscale it first (CLIP sees it at a few hundred pixels)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise PromptError(f"image {name} is {w:,} x {h:,} pixels, an aspect ratio over {MAX_ASPECT}:1; CLIP sees "
                          "only its centre square: crop it to the part you mean first")


def _eight_bit(image: Image.Image, name) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit "L", scaled by their range (Pillow's own
    convert("RGB") clips them, so they would come out all white or all black):
      I;16, I;16L, I;16B, I;16N   / 65535
      I (32-bit integer)          / 255 when every value is in [0, 255], / 65535 when in [0, 65535], else refused
      F (32-bit float)            taken as [0, 1] (values within 1e-3 outside it are clipped), else refused
    Other modes are returned as they are (convert("RGB") after the resize, as open_clip does: alpha dropped)."""
    from .errors import PromptError

    mode = image.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return image
    x = np.asarray(image).astype(np.float32)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "I":
        if lo < 0 or hi > 65535:
            raise PromptError(f"image {name} is a 32-bit integer image with values in [{lo:.0f}, {hi:.0f}], outside "
                              "8 or 16 bits: save it as an 8-bit (or 16-bit) PNG")
        top = 255.0 if hi <= 255 else 65535.0
    else:
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-3 and hi <= 1 + 1e-3):
            raise PromptError(f"image {name} is a float image with values in [{lo:.4g}, {hi:.4g}]; float images are "
                              "read as [0, 1]: scale it to [0, 1], or save it as an 8-bit PNG")
        top = 1.0
    x *= 255.0 / top
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "L")


def clip_pixels(image: str | Path | Image.Image, size: int) -> np.ndarray:
    """An image -> [3, size, size] float32 in [0, 1], as open_clip's eval transform prepares it: resize
    the shorter side to `size` (bicubic; the longer side truncated to int, as torchvision), centre crop
    (offsets rounded as torchvision), convert to RGB. The image_encoder graph then applies mean/std.
    Sizes are checked from the header before decoding (MAX_IMAGE_PIXELS, MAX_ASPECT); 16-bit, 32-bit integer
    and float images are scaled to 8 bits by their range first (_eight_bit), every other mode is converted as
    open_clip does (.convert("RGB"): alpha dropped, palettes, CMYK and 1-bit images expanded)."""
    from .errors import PromptError, ShapeError

    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= 4096:
        raise ShapeError(f"the CLIP input size must be a whole number in [1, 4096], got {str(size)[:100]}")
    name = image if isinstance(image, str | os.PathLike) else f"({type(image).__name__})"
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as f:
                _check_geometry(*f.size, name)  # from the header: Image.open does not decode
                image = f.copy()
        except Image.DecompressionBombError as e:  # PIL's guard against huge images (not an OSError)
            raise PromptError(f"cannot read image {image}: {e}; downscale it first") from None
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, PromptError):
                raise
            raise PromptError(f"cannot read image {image}: {e}; give a PNG, JPEG or WebP file") from None
    else:
        _check_geometry(*image.size, name)
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    try:
        image = _eight_bit(image, name)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        with warnings.catch_warnings():  # P with transparency: open_clip's convert("RGB") drops it, as here
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            image = image.crop((left, top, left + size, top + size)).convert("RGB")
    except (OSError, ValueError, TypeError) as e:
        if isinstance(e, PromptError):
            raise
        raise PromptError(f"cannot convert image {name} (mode {image.mode}) to RGB: {e}; save it as an RGB PNG "
                          "or JPEG") from None
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
