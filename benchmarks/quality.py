"""Quality table of an embedded world: judge accuracy and seconds per sample for
    translator only (T = 0), Langevin from z ~ p(z) at T in STEPS, and TR0N (translator, then Langevin).

    python benchmarks/quality.py --world shapes --json benchmarks/quality-shapes.json
Also reports the unconditional coverage of the world's attribute pairs (shape x colour, or classes),
so that a collapsed generator is caught. Settings other than T and init are the pipeline's defaults.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tr0n_rt.backends import open_backend
from tr0n_rt.judge import open_judge
from tr0n_rt.paths import world_dir
from tr0n_rt.sampler import Sampler


def accuracy(sampler, judge, queries, samples, seed, batch, config) -> tuple[float, float]:
    """Judge accuracy over queries x samples, and wall seconds per sample. Every row gets its own seed
    (base + row): a world's query list repeats classes, and repeated (query, seed) pairs would only
    repeat the same image."""
    rows = [(q, seed + i * samples + j) for i, q in enumerate(queries) for j in range(samples)]
    conditions = sampler.conditions([q for q, _ in rows])
    correct, tick = 0, time.perf_counter()
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        out = sampler.sample(conditions[start:start + batch], [s for _, s in part], config)
        verdicts = judge.verdicts(out.images, [q for q, _ in part])
        correct += sum(bool(v["correct"]) for v in verdicts)
    return correct / len(rows), (time.perf_counter() - tick) / len(rows)


def coverage(sampler, judge, world: str, n: int, seed: int, batch: int) -> dict:
    """What the judge sees in n unconditional samples G(z), z ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    for start in range(0, n, batch):
        z = rng.standard_normal((min(batch, n - start), sampler.info.latent_dim), dtype=np.float32)
        images = sampler.backend.to_host(sampler.backend.run("generator", {"latent": z})["images"])
        probe = ["a red circle"] * len(z) if world == "shapes" else ["0"] * len(z)
        for v in judge.verdicts(images, probe):
            key = (v.get("shape"), v.get("colour")) if world == "shapes" else v.get("predicted")
            counts[str(key)] += 1
    total = 30 if world == "shapes" else 10
    return {"samples": n, "covered": len(counts), "of": total, "min_count": min(counts.values()) if counts else 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="shapes")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--queries", type=int, default=120, help="first N prompts of the world's prompts.txt")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-baselines", action="store_true", help="only TR0N rows (and T = 0)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    folder = world_dir(args.world)
    kwargs = {"precision": args.precision} if args.backend != "torch" else {}
    sampler = Sampler(open_backend(args.backend, folder, **kwargs))
    judge = open_judge(folder)
    queries = [q for q in (folder / "prompts.txt").read_text().splitlines() if q.strip()][:args.queries]
    base = sampler.config
    rows = []

    def run(method, steps, **cfg):
        acc, sec = accuracy(sampler, judge, queries, args.samples, args.seed, args.batch,
                            base.with_overrides(steps=steps, **cfg))
        rows.append({"method": method, "steps": steps, "accuracy": acc, "seconds_per_sample": sec})
        print(f"{args.world:7s} {method:16s} T={steps:3d}  accuracy {acc:6.1%}  {sec * 1000:8.1f} ms/sample", flush=True)

    run("translator only", 0)
    for t in args.steps:
        if not args.no_baselines:
            run("langevin from p(z)", t, init="prior")
        run("TR0N", t, init="translator")
    cov = coverage(sampler, judge, args.world, 3000, args.seed, 250)
    print(f"unconditional coverage: {cov}")
    result = {"world": args.world, "backend": args.backend, "precision": args.precision,
              "queries": len(queries), "samples_per_query": args.samples, "settings": base.to_dict(),
              "rows": rows, "coverage": cov, "machine": f"{platform.machine()} {platform.processor()}",
              "python": sys.version.split()[0]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
