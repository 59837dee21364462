"""Images out: [-1, 1] float arrays -> PNG files and captioned grids (numpy + Pillow only)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw



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


def clip_pixels(image: str | Path | Image.Image, size: int) -> np.ndarray:
    """An image -> [3, size, size] float32 in [0, 1], as open_clip's eval transform prepares it: resize
    the shorter side to `size` (bicubic; the longer side truncated to int, as torchvision), centre crop
    (offsets rounded as torchvision), convert to RGB. The image_encoder graph then applies mean/std."""
    from .errors import PromptError

    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as f:
                image = f.copy()
        except Image.DecompressionBombError as e:  # PIL's guard against huge images (not an OSError)
            raise PromptError(f"cannot read image {image}: {e}; downscale it first") from None
        except (OSError, ValueError) as e:
            raise PromptError(f"cannot read image {image}: {e}; give a PNG, JPEG or WebP file") from None
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
