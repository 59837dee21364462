"""Issue 8's features measured on the shapes world, by its independent judge (accuracy, not speed):

1. image conditioning: procedural images of known attributes (drawn with PIL, never by G) written as
   PNG files; TR0N conditioned on each file's CLIP image embedding, with the image translator (trained
   without condition noise) and with the text translator; judged against the image's own attributes.
2. aesthetic term: the world's size-loving head at several alpha: the radius G reads from the final
   latent, the head's score, the similarity energy and the judge's accuracy on the prompt.
3. interpolation: strips between two prompts of different shape and colour; how often the judge accepts
   the first prompt, the second, at each t.

    python benchmarks/image_features.py --json benchmarks/image-features-shapes.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tr0n_rt.backends import open_backend
from tr0n_rt.interpolate import interpolate
from tr0n_rt.judge import RuntimeJudge
from tr0n_rt.paths import world_dir
from tr0n_rt.sampler import Sampler


def image_conditioning(s: Sampler, judge, n: int, samples: int, steps: list[int], seed: int) -> list[dict]:
    from tr0n_rt.export.worlds.shapes import data
    from tr0n_rt.images import to_pil

    attrs = data.sample_attributes(n, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as tmp:
        for i, img in enumerate(data.render(attrs).numpy()):
            to_pil(img).save(Path(tmp) / f"{i:04d}.png")
        c, _ = s.image_conditions([tmp])
    prompts = [f"a {a.colour} {a.shape} on a {a.background} background" for a in attrs]
    rows = []
    for translator in ("image_translator", "translator"):
        for t in steps:
            cfg = s.config.with_overrides(steps=t)
            verdicts = []
            for j in range(samples):
                out = s.sample(c, [seed + 1000 * j + i for i in range(n)], cfg, translator=translator)
                verdicts += judge.verdicts(out.images, prompts)
            rows.append({"translator": translator, "steps": t, "images": n * samples,
                         "accuracy": float(np.mean([v["correct"] for v in verdicts])),
                         "shape_and_colour": float(np.mean([v["shape"] == v["wanted"]["shape"] and
                                                            v["colour"] == v["wanted"]["colour"] for v in verdicts]))})
            print(rows[-1], flush=True)
    return rows


def aesthetic(s: Sampler, judge, prompts: list[str], alphas: list[float], seed: int) -> list[dict]:
    from tr0n_rt.export.worlds.shapes import data

    lo, hi = data.RADIUS_RANGE
    c = s.conditions(prompts)
    rows = []
    for alpha in alphas:
        out = s.sample(c, [seed + i for i in range(len(prompts))], s.config.with_overrides(aesthetic_weight=alpha))
        radius = lo + (hi - lo) / (1 + np.exp(-1.6 * out.latents[:, 16]))
        rows.append({"alpha": alpha, "radius": float(radius.mean()), "aesthetic": float(out.aesthetic.mean()),
                     "similarity_energy": float(out.energies.mean()),
                     "accuracy": float(np.mean([v["correct"] for v in judge.verdicts(out.images, prompts)]))})
        print(rows[-1], flush=True)
    return rows


def interpolation(s: Sampler, judge, pairs: list[tuple[str, str]], points: int, seed: int) -> list[dict]:
    accept = np.zeros((2, points))
    for a, b in pairs:
        c = s.conditions([a, b])
        out = s.sample(interpolate(c[0], c[1], points, "text"), [seed] * points)
        accept[0] += [v["correct"] for v in judge.verdicts(out.images, [a] * points)]
        accept[1] += [v["correct"] for v in judge.verdicts(out.images, [b] * points)]
    t = np.linspace(0, 1, points)
    return [{"t": float(t[i]), "first_prompt": float(accept[0, i] / len(pairs)),
             "second_prompt": float(accept[1, i] / len(pairs))} for i in range(points)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    folder = world_dir("shapes")
    s = Sampler(open_backend(args.backend, folder))
    judge = RuntimeJudge.from_bundle(folder)
    tick = time.perf_counter()
    prompts = [p for p in (folder / "prompts.txt").read_text().splitlines() if p][:120]
    from tr0n_rt.export.worlds.shapes import data

    rng = np.random.default_rng(args.seed + 7)
    pairs = []
    while len(pairs) < 30:
        (s1, s2), (c1, c2) = rng.choice(data.SHAPES, 2, replace=False), rng.choice(data.COLOUR_NAMES, 2, replace=False)
        pairs.append((f"a {c1} {s1}", f"a {c2} {s2}"))
    result = {
        "world": "shapes", "backend": args.backend, "settings": s.config.to_dict(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "image_conditioning": image_conditioning(s, judge, args.images, args.samples, [0, 10, 25], args.seed),
        "aesthetic": aesthetic(s, judge, prompts, [0.0, 0.25, 0.5, 1.0], args.seed),
        "interpolation": {"pairs": len(pairs), "points": interpolation(s, judge, pairs, 7, args.seed)},
    }
    result["seconds"] = round(time.perf_counter() - tick, 1)
    text = json.dumps(result, indent=2)
    if args.json:
        from tr0n_rt.atomic import write_bytes

        write_bytes(args.json, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
