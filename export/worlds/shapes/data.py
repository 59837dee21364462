"""Procedural training data of the shapes world: one coloured shape on a plain background, with captions.

Images are drawn with PIL at 4x and box-filtered down (anti-aliased edges), independently of the
differentiable renderer, so the CLIP and the judge trained here never see the generator's pixels.
Geometry is shared with the renderer through `SHAPE_POLYGONS` (local units: the shape's radius is 1).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SHAPES = ["circle", "square", "triangle", "star", "cross"]
COLOURS = {  # object colours, RGB in [0, 1]
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.98, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.00),
}
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
COLOUR_NAMES = list(COLOURS)
BACKGROUND_NAMES = list(BACKGROUNDS)

# Position, size, rotation and shade ranges; the renderer squashes z into the same ranges.
CENTER_RANGE = 0.33             # centre in [-0.33, 0.33]^2; image coordinates span [-1, 1], y up
RADIUS_RANGE = (0.40, 0.65)     # shape radius, same units (0.40 = 6.4 px at 32 px)
SHADE_RANGE = 0.15              # object colour mixed up to 15% towards white (shade > 0) or black (< 0)
BACKGROUND_SHADE_RANGE = 0.10   # the same for the background

TEMPLATES_FULL = [  # name shape and colour
    "a {colour} {shape}",
    "{colour} {shape}",
    "a picture of a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a drawing of a {colour} {shape}",
]
TEMPLATES_BACKGROUND = [  # name shape, colour and background
    "a {colour} {shape} on a {background} background",
    "{colour} {shape} on {background} background",
    "a picture of a {colour} {shape} on a {background} background",
    "a photo of a {colour} {shape} on a {background} background",
]
TEMPLATES_PARTIAL = [  # name only some attributes (rarer in training, so the text tower composes)
    "a {shape}",
    "a {shape} on a {background} background",
    "a {colour} shape",
    "something {colour}",
]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi / 2 + k * math.pi / points  # first tip points up
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _regular(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


CIRCLE_RADIUS = 0.85   # circle drawn at 0.85 so its area is close to the other shapes'
STAR_INNER = 0.45
CROSS_HALF_WIDTH = 0.32
SHAPE_POLYGONS: dict[str, list[tuple[float, float]]] = {  # counter-clockwise, y up, radius 1
    "square": _regular(4, 1.0, math.pi / 4),           # half side 0.707
    "triangle": _regular(3, 1.0, math.pi / 2),         # tip up
    "star": _star(5, STAR_INNER),
    "cross": [(w, h) for w, h in [
        (CROSS_HALF_WIDTH, -1.0), (CROSS_HALF_WIDTH, -CROSS_HALF_WIDTH), (1.0, -CROSS_HALF_WIDTH),
        (1.0, CROSS_HALF_WIDTH), (CROSS_HALF_WIDTH, CROSS_HALF_WIDTH), (CROSS_HALF_WIDTH, 1.0),
        (-CROSS_HALF_WIDTH, 1.0), (-CROSS_HALF_WIDTH, CROSS_HALF_WIDTH), (-1.0, CROSS_HALF_WIDTH),
        (-1.0, -CROSS_HALF_WIDTH), (-CROSS_HALF_WIDTH, -CROSS_HALF_WIDTH), (-CROSS_HALF_WIDTH, -1.0),
    ]],
}

# The world's one word list: the tokenizer's vocabulary, and its aliases, are also the words the judge
# reads in a prompt (parse_prompt here, tr0n_rt/judge.py at runtime).
VOCAB: list[str] = sorted({
    w for t in TEMPLATES_FULL + TEMPLATES_BACKGROUND + TEMPLATES_PARTIAL
    for w in re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", t))
} | set(SHAPES) | set(COLOURS) | set(BACKGROUNDS))
ALIASES = {"grey": "gray"}


def prompt_words(prompt: str) -> list[str]:
    """A prompt's words as the world's tokenizer reads them (letter runs, lower-cased, aliases replaced)."""
    from tr0n_rt.tokenizer import WordTokenizer

    return WordTokenizer(VOCAB, aliases=ALIASES).words(prompt)


@dataclass(frozen=True)
class Attributes:
    """One picture's contents. Position (cx, cy) and radius in image units ([-1, 1] spans the image),
    angle in radians, shade and background_shade in [-1, 1]."""

    shape: str
    colour: str
    background: str
    cx: float = 0.0
    cy: float = 0.0
    radius: float = 0.5
    angle: float = 0.0
    shade: float = 0.0
    background_shade: float = 0.0


def sample_attributes(n: int, rng: np.random.Generator) -> list[Attributes]:
    """n attribute sets, every field independent and uniform over its range."""
    s = rng.integers(0, len(SHAPES), n)
    c = rng.integers(0, len(COLOURS), n)
    b = rng.integers(0, len(BACKGROUNDS), n)
    cxy = rng.uniform(-CENTER_RANGE, CENTER_RANGE, (n, 2))
    rad = rng.uniform(*RADIUS_RANGE, n)
    ang = rng.uniform(0, 2 * math.pi, n)
    shade = rng.uniform(-1, 1, (n, 2))
    return [Attributes(SHAPES[s[i]], COLOUR_NAMES[c[i]], BACKGROUND_NAMES[b[i]], float(cxy[i, 0]),
                       float(cxy[i, 1]), float(rad[i]), float(ang[i]), float(shade[i, 0]), float(shade[i, 1]))
            for i in range(n)]


def shaded(rgb, shade: float, strength: float = SHADE_RANGE) -> tuple[float, float, float]:
    """Mixes an RGB colour up to `strength` towards white (shade > 0) or black (shade < 0)."""
    a = strength * shade
    return tuple(x + max(a, 0.0) * (1 - x) - max(-a, 0.0) * x for x in rgb)


@dataclass(frozen=True)
class Style:
    """How a picture is drawn, apart from what it shows. The default is the world's own style (filled,
    drawn at 4x and box-filtered: anti-aliased edges, exact geometry, the palette's colours); the others
    are pictures as people draw them, which the CLIP's image tower learns to read as the world's own
    (build.adapt_image_tower):

    supersample     1: hard, aliased edges (drawn straight at the output size); 4: anti-aliased
    outline         stroke width in output pixels; 0 fills the shape, > 0 draws only its outline
    jitter          every vertex moved by a normal offset of this std (units of the shape's radius),
                    circles drawn as a wobbly, slightly oval 24-gon; 0: exact geometry
    colour_offset   added to the object's RGB (in [0, 1], clipped): off-palette but nameable colours
    seed            seeds the jitter
    """

    supersample: int = 4
    outline: float = 0.0
    jitter: float = 0.0
    colour_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0


DEFAULT_STYLE = Style()
CIRCLE_SIDES = 24  # a jittered circle's polygon

# sample_styles' mix: the probability of each change in a styled picture, independently.
STYLE_MIX = {"hard": 0.8, "outline": 0.3, "jitter": 0.4, "colour": 0.4}
JITTER_RANGE = (0.03, 0.08)      # vertex jitter std, units of the radius
OUTLINE_RANGE = (1.5, 3.5)       # stroke width, output pixels
COLOUR_OFFSET_RANGE = 0.10       # per channel, RGB in [0, 1]


def sample_styles(n: int, rng: np.random.Generator, p: float = 0.5) -> list[Style]:
    """n styles: with probability 1 - p the default; else each of STYLE_MIX's changes independently with
    its probability: hard edges, an outline (OUTLINE_RANGE px), vertex jitter (JITTER_RANGE) and a
    colour offset (up to COLOUR_OFFSET_RANGE per channel)."""
    out = []
    for _ in range(n):
        if rng.random() >= p:
            out.append(DEFAULT_STYLE)
            continue
        hard, outline, jitter, colour = rng.random(4) < tuple(STYLE_MIX[k] for k in ("hard", "outline", "jitter", "colour"))
        out.append(Style(
            supersample=1 if hard else 4,
            outline=float(rng.uniform(*OUTLINE_RANGE)) if outline else 0.0,
            jitter=float(rng.uniform(*JITTER_RANGE)) if jitter else 0.0,
            colour_offset=(tuple(float(v) for v in rng.uniform(-COLOUR_OFFSET_RANGE, COLOUR_OFFSET_RANGE, 3))
                           if colour else (0.0, 0.0, 0.0)),
            seed=int(rng.integers(2**31))))
    return out


def _outline_units(shape: str, jitter: float, seed: int) -> list[tuple[float, float]]:
    """The outline of `shape` (local units, radius 1, y up), jittered for a Style with jitter > 0."""
    rng = np.random.default_rng(seed)
    if shape == "circle":
        aspect = math.exp(rng.normal(0, jitter))
        pts = [(CIRCLE_RADIUS * aspect * math.cos(2 * math.pi * k / CIRCLE_SIDES),
                CIRCLE_RADIUS / aspect * math.sin(2 * math.pi * k / CIRCLE_SIDES)) for k in range(CIRCLE_SIDES)]
        scale = 0.5  # neighbouring vertices are close: a smaller wobble keeps it a round
    else:
        pts, scale = SHAPE_POLYGONS[shape], 1.0
    d = rng.normal(0, jitter * scale, (len(pts), 2))
    return [(x + dx, y + dy) for (x, y), (dx, dy) in zip(pts, d)]


def render_one(a: Attributes, image_size: int = IMAGE_SIZE, style: Style = DEFAULT_STYLE) -> np.ndarray:
    """-> uint8 [image_size, image_size, 3]. Image y grows downwards; shape coordinates have y up.
    style: how it is drawn (default: the world's own)."""
    supersample = style.supersample
    big = image_size * supersample
    bg = tuple(int(round(255 * v)) for v in shaded(BACKGROUNDS[a.background], a.background_shade,
                                                    BACKGROUND_SHADE_RANGE))
    rgb = shaded(COLOURS[a.colour], a.shade)
    if any(style.colour_offset):
        rgb = tuple(min(max(v + o, 0.0), 1.0) for v, o in zip(rgb, style.colour_offset))
    fg = tuple(int(round(255 * v)) for v in rgb)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    half = big / 2

    def to_px(x: float, y: float) -> tuple[float, float]:  # image units -> pixel coordinates
        return ((x + 1) * half, (1 - y) * half)

    if style.outline > 0 or style.jitter > 0 or a.shape != "circle":
        if style.jitter > 0:
            local = _outline_units(a.shape, style.jitter, style.seed)
        elif a.shape == "circle":
            local = [(CIRCLE_RADIUS * math.cos(2 * math.pi * k / 64), CIRCLE_RADIUS * math.sin(2 * math.pi * k / 64))
                     for k in range(64)]
        else:
            local = SHAPE_POLYGONS[a.shape]
        ca, sa = math.cos(a.angle), math.sin(a.angle)
        pts = [to_px(a.cx + a.radius * (ca * x - sa * y), a.cy + a.radius * (sa * x + ca * y)) for x, y in local]
        if style.outline > 0:
            draw.line(pts + pts[:1], fill=fg, width=max(1, int(round(style.outline * supersample))), joint="curve")
        else:
            draw.polygon(pts, fill=fg)
    else:
        r = CIRCLE_RADIUS * a.radius
        x0, y0 = to_px(a.cx - r, a.cy + r)
        x1, y1 = to_px(a.cx + r, a.cy - r)
        draw.ellipse([x0, y0, x1, y1], fill=fg)
    if supersample > 1:
        img = img.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def render(attrs: list[Attributes], image_size: int = IMAGE_SIZE, styles: list[Style] | None = None) -> torch.Tensor:
    """-> float32 [N, 3, image_size, image_size] in [-1, 1]. styles: one per picture (default: the world's)."""
    styles = styles or [DEFAULT_STYLE] * len(attrs)
    arr = np.stack([render_one(a, image_size, style=st) for a, st in zip(attrs, styles, strict=True)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def caption(a: Attributes, rng: np.random.Generator, partial: float = 0.0) -> str:
    """A random caption of `a`: with probability `partial` one that names only some attributes."""
    if rng.random() < partial:
        pool = TEMPLATES_PARTIAL
    else:
        pool = TEMPLATES_FULL if rng.random() < 0.5 else TEMPLATES_BACKGROUND
    t = pool[rng.integers(len(pool))]
    return t.format(shape=a.shape, colour=a.colour, background=a.background)


def sample_batch(n: int, rng: np.random.Generator, image_size: int = IMAGE_SIZE, partial: float = 0.0):
    """-> (images [n, 3, S, S] in [-1, 1], captions list[str], attributes list[Attributes])."""
    attrs = sample_attributes(n, rng)
    return render(attrs, image_size), [caption(a, rng, partial) for a in attrs], attrs


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """The attributes a prompt names: {"shape", "colour", "background"}, None where not named.

    Words outside the vocabulary are ignored; the first shape / colour / background word wins.
    Object colours and background colours are disjoint word sets, so "a circle on a white background"
    names a background but no object colour.
    """
    out: dict[str, str | None] = {"shape": None, "colour": None, "background": None}
    for w in prompt_words(prompt):
        for field, names in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS)):
            if out[field] is None and w in names:
                out[field] = w
    return out


def evaluation_prompts() -> list[str]:
    """150 distinct prompts: for each of the 30 shape x colour pairs, 3 without a background and 2 with one."""
    prompts = []
    k = 0
    for shape in SHAPES:
        for colour in COLOURS:
            for t in ("a {colour} {shape}", "a picture of a {colour} {shape}", "{colour} {shape}"):
                prompts.append(t.format(shape=shape, colour=colour))
            for t in ("a {colour} {shape} on a {background} background",
                      "a photo of a {colour} {shape} on a {background} background"):
                prompts.append(t.format(shape=shape, colour=colour, background=BACKGROUND_NAMES[k % 3]))
                k += 1
    return prompts
