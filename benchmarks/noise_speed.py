"""Host cost of one Langevin step's noise: the bundle format's Philox scheme (tr0n_rt/noise.py) against
numpy's default generator per row (what format version 1 drew), side by side in one run.

    python benchmarks/noise_speed.py [--json out.json]

Per step the sampler draws A x 8 uniforms and K x D normals per row. Medians of --repeats runs after a
warm-up, in milliseconds per step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from tr0n_rt import noise

SHAPES = {"shapes world, fast preset": (16, 8, 10, 20), "StyleGAN2 + ViT-B-32, paper preset": (8, 50, 10, 512)}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tick) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = {}
    for name, (b, a, k, d) in SHAPES.items():
        keys = noise.check_seeds(range(b))

        def philox():
            noise.uniform(keys, noise.AUGMENT, 3, (a, 8))
            noise.normal(keys, noise.SGLD, 3, (k, d))

        rngs = [np.random.default_rng(s) for s in range(b)]

        def numpy_rows():
            for r in rngs:
                r.random((a, 8), dtype=np.float32)
                r.standard_normal((k, d), dtype=np.float32)

        p, n = median_ms(philox, args.repeats), median_ms(numpy_rows, args.repeats)
        rows[name] = {"B": b, "A": a, "K": k, "D": d, "philox_ms": round(p, 3), "numpy_ms": round(n, 3),
                      "ratio": round(p / n, 2)}
        print(f"{name}: B={b} A={a} K={k} D={d}  philox {p:.3f} ms  numpy {n:.3f} ms  ratio {p / n:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
