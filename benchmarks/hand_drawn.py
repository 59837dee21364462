"""Image conditioning of the shapes world on hand-made images: pictures drawn here with PIL's ImageDraw
directly (their own geometry, never data.render_one, never G), in several styles, written as PNG files,
read back the way `Sampler.image_conditions` reads any image file.

Styles (sizes, positions, rotations and shades within the world's ranges, data.py):
    rendered    the reference row: data.render (the world's own anti-aliased training pictures)
    hard        filled polygons / ellipses drawn straight at 32 px: hard, aliased edges, no supersampling
    outline     outlines only: a 2-3 px stroke in the object colour, hard-edged, the inside left background
    jitter      hand-drawn-like: every vertex moved by up to ~12% of the radius, circles as wobbly
                24-gons of uneven aspect, hard-edged
    offpalette  hard-edged, in nameable colours off the world's palette (every channel moved by up
                to +-0.15, e.g. pure red, olive-ish green, sky blue)
    large       hard-edged at 128 px in the file; the loader's bicubic resize brings it to 32 px

1. Filter: each picture's attributes as the prompt "a {colour} {shape} on a {background} background";
   only pictures the world's judge recognises (its verdict on that prompt correct) are kept, so a
   failure below is the conditioning's, not a picture nobody could name. The count kept is reported.
2. TR0N conditioned on each kept file's CLIP image embedding, with the image translator, at T in
   --steps (world defaults otherwise), `--samples` seeds per picture; the outputs judged against the
   picture's attributes: accuracy (shape + colour + background) and shape + colour, each with a 95%
   Wilson interval (outputs of one picture are counted as independent trials), and which shapes the
   wrong ones came out as.

    python benchmarks/hand_drawn.py                               # the shipped shapes world
    python benchmarks/hand_drawn.py --pipeline /tmp/hw/bundle --json /tmp/hw/hand-drawn.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tr0n_rt.backends import open_backend
from tr0n_rt.images import clip_pixels
from tr0n_rt.judge import RuntimeJudge
from tr0n_rt.paths import world_dir
from tr0n_rt.sampler import Sampler

STYLES = ["rendered", "hard", "outline", "jitter", "offpalette", "large"]
SIZE = 32


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


# --- hand-made geometry: outlines in units of the shape's radius, y up (own definitions) ------------------
def outline_points(shape: str, rng: np.random.Generator, jitter: float = 0.0) -> list[tuple[float, float]]:
    if shape == "circle":
        n, aspect = 24, (1.0 + rng.uniform(-0.12, 0.12) if jitter else 1.0)
        pts = [(0.85 * math.cos(2 * math.pi * k / n) * aspect, 0.85 * math.sin(2 * math.pi * k / n) / aspect)
               for k in range(n)]
    elif shape == "square":
        pts = [(0.7, 0.7), (-0.7, 0.7), (-0.7, -0.7), (0.7, -0.7)]
    elif shape == "triangle":
        pts = [(math.cos(math.pi / 2 + 2 * math.pi * k / 3), math.sin(math.pi / 2 + 2 * math.pi * k / 3))
               for k in range(3)]
    elif shape == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi / 2 + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif shape == "cross":
        w = 0.3
        pts = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
    else:
        raise ValueError(shape)
    if jitter:
        j = rng.uniform(-jitter, jitter, (len(pts), 2))
        if shape == "circle":  # a wobbly hand-drawn round: smooth radial wobble, not spikes
            j = j * 0.4
        pts = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(pts, j)]
    return pts


def draw_picture(a, style: str, rng: np.random.Generator) -> Image.Image:
    """One hand-made picture of attributes `a` (data.Attributes) in `style` (not "rendered")."""
    from tr0n_rt.export.worlds.shapes import data

    size = 128 if style == "large" else SIZE
    bg = data.shaded(data.BACKGROUNDS[a.background], a.background_shade, data.BACKGROUND_SHADE_RANGE)
    fg = data.shaded(data.COLOURS[a.colour], a.shade)
    if style == "offpalette":
        fg = tuple(float(np.clip(v + rng.uniform(-0.15, 0.15), 0, 1)) for v in fg)
    to8 = lambda rgb: tuple(round(255 * v) for v in rgb)
    img = Image.new("RGB", (size, size), to8(bg))
    draw = ImageDraw.Draw(img)
    half = size / 2
    pts = outline_points(a.shape, rng, jitter=0.12 if style == "jitter" else 0.0)
    ca, sa = math.cos(a.angle), math.sin(a.angle)
    px = [((a.cx + a.radius * (ca * x - sa * y) + 1) * half, (1 - a.cy - a.radius * (sa * x + ca * y)) * half)
          for x, y in pts]
    if style == "outline":
        width = int(rng.integers(2, 4))
        draw.line(px + px[:1], fill=to8(fg), width=width, joint="curve")
    else:
        draw.polygon(px, fill=to8(fg))
    return img


def make_pictures(style: str, n: int, seed: int, folder: Path) -> tuple[list[Path], list]:
    from tr0n_rt.export.worlds.shapes import data

    from tr0n_rt.images import to_pil

    rng = np.random.default_rng([seed, STYLES.index(style)])
    attrs = data.sample_attributes(n, rng)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if style == "rendered":
        for i, img in enumerate(data.render(attrs).numpy()):
            files.append(folder / f"{style}-{i:04d}.png")
            to_pil(img).save(files[-1])
    else:
        for i, a in enumerate(attrs):
            files.append(folder / f"{style}-{i:04d}.png")
            draw_picture(a, style, rng).save(files[-1])
    return files, attrs


def prompt_of(a) -> str:
    return f"a {a.colour} {a.shape} on a {a.background} background"


def run_style(s: Sampler, judge: RuntimeJudge, style: str, n: int, samples: int, steps: list[int], seed: int,
              tmp: Path, keep: Path | None) -> dict:
    files, attrs = make_pictures(style, n, seed, (keep or tmp) / style)
    size = s.image_input()["size"]
    pixels = np.stack([clip_pixels(f, size) for f in files]) * 2 - 1  # what CLIP sees, in [-1, 1]
    prompts = [prompt_of(a) for a in attrs]
    first = judge.verdicts(pixels, prompts)
    kept = [i for i, v in enumerate(first) if v["correct"]]
    row = {"style": style, "drawn": n, "kept": len(kept),
           "kept_by_shape": {sh: sum(attrs[i].shape == sh for i in kept) for sh in sorted({a.shape for a in attrs})},
           "judge_misses": dict(Counter(k for v in first if not v["correct"] for k in ("shape", "colour", "background")
                                        if v[k] != v["wanted"][k]))}
    if not kept:
        row["steps"] = []
        return row
    c, _ = s.image_conditions([files[i] for i in kept])
    wanted = [prompts[i] for i in kept]
    row["steps"] = []
    for t in steps:
        cfg = s.config.with_overrides(steps=t)
        verdicts = []
        for j in range(samples):
            out = s.sample(c, [seed + 1000 * j + i for i in range(len(kept))], cfg, translator=s.image_translator)
            verdicts += judge.verdicts(out.images, wanted)
        m = len(verdicts)
        right = sum(v["correct"] for v in verdicts)
        sc = sum(v["shape"] == v["wanted"]["shape"] and v["colour"] == v["wanted"]["colour"] for v in verdicts)
        wrong_shape = Counter(f"{v['wanted']['shape']}->{v['shape']}" for v in verdicts
                              if v["shape"] != v["wanted"]["shape"])
        wrong_colour = Counter(f"{v['wanted']['colour']}->{v['colour']}" for v in verdicts
                               if v["colour"] != v["wanted"]["colour"])
        wrong_bg = sum(v["background"] != v["wanted"]["background"] for v in verdicts)
        row["steps"].append({
            "steps": t, "outputs": m, "correct": right, "shape_and_colour_correct": sc,
            "accuracy": right / m, "accuracy_ci95": [round(x, 4) for x in wilson(right, m)],
            "shape_and_colour": sc / m, "shape_and_colour_ci95": [round(x, 4) for x in wilson(sc, m)],
            "wrong_shapes": dict(wrong_shape.most_common()), "wrong_colours": dict(wrong_colour.most_common()),
            "wrong_backgrounds": wrong_bg})
    return row


def pooled(rows: list[dict]) -> dict:
    """The hand-made styles together (every style but "rendered"), as one more row."""
    hand = [r for r in rows if r["style"] != "rendered"]
    out = {"style": "all hand", "drawn": sum(r["drawn"] for r in hand), "kept": sum(r["kept"] for r in hand),
           "steps": []}
    for t in sorted({st["steps"] for r in hand for st in r["steps"]}):
        sts = [st for r in hand for st in r["steps"] if st["steps"] == t]
        m, right, sc = (sum(st[k] for st in sts) for k in ("outputs", "correct", "shape_and_colour_correct"))
        shapes = Counter()
        for st in sts:
            shapes.update(st["wrong_shapes"])
        out["steps"].append({"steps": t, "outputs": m, "correct": right, "shape_and_colour_correct": sc,
                             "accuracy": right / m, "accuracy_ci95": [round(x, 4) for x in wilson(right, m)],
                             "shape_and_colour": sc / m, "shape_and_colour_ci95": [round(x, 4) for x in wilson(sc, m)],
                             "wrong_shapes": dict(shapes.most_common())})
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'style':<11} {'kept':>8}  {'T':>3}  {'accuracy [95% CI]':<26} {'shape+colour [95% CI]':<26} wrong shapes"]
    for r in rows:
        for st in r["steps"] or [{}]:
            if not st:
                lines.append(f"{r['style']:<11} {r['kept']:>3}/{r['drawn']:<4}  (none kept)")
                continue
            a, sc = st["accuracy_ci95"], st["shape_and_colour_ci95"]
            ws = ", ".join(f"{k} {v}" for k, v in list(st["wrong_shapes"].items())[:4])
            lines.append(f"{r['style']:<11} {r['kept']:>3}/{r['drawn']:<4}  {st['steps']:>3}  "
                         f"{st['accuracy']:.3f} [{a[0]:.3f}, {a[1]:.3f}]       "
                         f"{st['shape_and_colour']:.3f} [{sc[0]:.3f}, {sc[1]:.3f}]       {ws}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, default=None, help="bundle folder (default: the shipped shapes world)")
    ap.add_argument("--judge", type=Path, default=None,
                    help="bundle whose judge filters and judges (default: the --pipeline's own)")
    ap.add_argument("--n", type=int, default=100, help="pictures drawn per style (before the judge's filter)")
    ap.add_argument("--samples", type=int, default=1, help="TR0N outputs per kept picture")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 25], help="Langevin steps T")
    ap.add_argument("--styles", nargs="+", default=STYLES, choices=STYLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["mixture", "sample"], default=None,
                    help="sampling mode (default: the pipeline's; mixture: the reference code's)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    ap.add_argument("--keep-images", type=Path, default=None, help="write the pictures here instead of a temp dir")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    folder = args.pipeline or world_dir("shapes")
    backend = open_backend(args.backend, folder, threads=args.threads)
    s = Sampler(backend, backend.info.sampling.with_overrides(mode=args.mode))
    judge = RuntimeJudge.from_bundle(args.judge or folder)
    if judge is None:
        raise SystemExit(f"{args.judge or folder} has no judge")
    tick = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in args.styles:
            rows.append(run_style(s, judge, style, args.n, args.samples, args.steps, args.seed, Path(tmp),
                                  args.keep_images))
            print("\n".join(table(rows[-1:]).splitlines()[1:]), flush=True)
    if any(r["style"] != "rendered" for r in rows):
        rows.append(pooled(rows))
    result = {"pipeline": str(Path(folder).resolve()), "judge": str(Path(args.judge or folder).resolve()),
              "backend": args.backend, "translator": s.image_translator, "settings": s.config.to_dict(),
              "n": args.n, "samples": args.samples, "seed": args.seed,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "styles": rows,
              "seconds": round(time.perf_counter() - tick, 1)}
    print(table(rows))
    print(f"{result['seconds']} s")
    if args.json:
        from tr0n_rt.atomic import write_bytes

        write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
