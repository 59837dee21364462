"""Quality table of an embedded world: judge accuracy (with a 95% Wilson interval), seconds per sample and,
for worlds judged by words, the diversity of what the prompts leave open, per prompt set, T and scheme.

    python benchmarks/quality.py --world shapes --json benchmarks/quality-shapes.json
    python benchmarks/quality.py --world shapes --sets unseen --schemes sample --steps 0 25 --samples 2

Prompt sets (--sets): a text world has "full", the first --queries prompts of its prompts.txt, and one set
per file benchmarks/prompts-<world>-<set>.txt (shapes: "underspecified", one or two attributes named;
"unseen", phrasings no training caption uses). A class world (digits) has "classes", its prompts.txt.

Schemes (--schemes, SCHEMES below): overrides of the pipeline's shipped settings (sampler.config):
"mixture" (the reference code: all K means and the logits refined), "sample" (the paper's Algorithm 2:
z0 ~ q(z | c), then Langevin on it) and "default" (the shipped settings as they are, whatever mode).

Rows, for every T in --steps and every scheme: "translator only" (T = 0) or "TR0N" (init translator, then
T Langevin steps); and "langevin from p(z)" (init prior: z0 ~ N(0, I), then T steps: no translator, so the
mode plays no part and it is one row per T, however many schemes). Schemes that come to the same effective
settings (say "default" is "mixture") share one row, computed once: its "schemes" lists them.

Each row: images judged, accuracy and its 95% Wilson score interval, seconds per sample (the sampler's
work: translator, Langevin and G; not the text encoder or the judge) and, for word-judged worlds, the
open-attribute diversity (tr0n_rt/diversity.py; prior verdicts on unconditional samples computed once per
run). Also reports the unconditional coverage of the world's attribute pairs (shape x colour, or
classes), so that a collapsed generator is caught.

Cost: the Langevin rows dominate, (prompts x samples) x T image-steps per distinct row, about 2 to 4 ms
per image-step on 2 CPU cores (onnxruntime fp32, A = 8). Shapes, all sets (120 + 74 + 80 prompts), --samples
4, T in 0 10 25 50, three distinct rows per T (mixture = default): about 10 to 18 minutes; four (a default
that is neither mixture nor sample): about 12 to 23 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
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

HERE = Path(__file__).resolve().parent

# Sampling schemes: name -> overrides of the pipeline's shipped settings. A new scheme is one line here.
SCHEMES = {
    "mixture": {"mode": "mixture"},  # the reference code: refine all K means and the per-dimension logits
    # the paper's Algorithm 2: z0 ~ q(z | c) (one draw, no extra start noise), then Langevin on that one latent
    "sample": {"mode": "sample", "candidates": 1, "start_noise": 0.0},
    "default": {},  # the pipeline's own settings (bundle manifest "sampling"), whatever mode they use
}
DEFAULT_STEPS = [0, 10, 25, 50]
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), 95% for z = 1.96:

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)      with p = correct / n

    Unlike the normal interval p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and is not empty at p = 0
    or 1. It treats the n images as independent: the samples of one prompt are not quite, so it is a
    lower bound on the uncertainty of a prompt set (and says nothing of the choice of prompts)."""
    if n <= 0:
        return math.nan, math.nan
    p, z2 = correct / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def prompt_sets(world: str, folder: Path, condition: str) -> dict[str, Path]:
    """Set name -> prompt file: "classes" (class worlds) or "full" (text worlds) is the world's prompts.txt;
    a text world adds benchmarks/prompts-<world>-<set>.txt, in name order after "underspecified"."""
    if condition == "class":
        return {"classes": folder / "prompts.txt"}
    sets = {"full": folder / "prompts.txt"}
    extra = sorted(HERE.glob(f"prompts-{world}-*.txt"), key=lambda p: (p.stem != f"prompts-{world}-underspecified",
                                                                       p.stem))
    sets.update({p.stem.removeprefix(f"prompts-{world}-"): p for p in extra})
    return sets


def read_queries(path: Path, limit: int) -> list[str]:
    queries = [q.strip() for q in path.read_text(encoding="utf-8").splitlines() if q.strip()]
    return queries[:limit] if limit else queries


def check_queries(judge, name: str, queries: list[str]) -> None:
    """A word judge marks a prompt that names none of its needs_any heads wrong whatever the image: refuse it."""
    rule = getattr(judge, "rule", {})
    if rule.get("kind") != "words" or not hasattr(judge, "parse_prompt"):
        return
    bad = [q for q in queries if not any(judge.parse_prompt(q)[h] for h in rule["needs_any"])]
    if bad:
        raise SystemExit(f"set {name!r}: {len(bad)} prompt(s) name none of {', '.join(rule['needs_any'])} after "
                         f"tokenising (the judge can never accept them): {bad[:5]}")


def scheme_config(base, overrides: dict, **fixed):
    """base with a scheme's overrides and `fixed` (steps, init)."""
    return base.with_overrides(**overrides, **fixed)


def effective(cfg) -> tuple:
    """The settings that decide a row's images, as a key: rows of equal keys give the same images and run
    once. Left out only what cannot matter: init "prior" takes no translator, so neither the mode nor sample
    mode's start (candidates, start_noise); mixture mode ignores that start too; at T = 0 the step graph's
    hyperparameters (HPARAM_NAMES) are never read."""
    from tr0n_rt.settings import HPARAM_NAMES

    d = cfg.to_dict()
    drop = set()
    if cfg.init == "prior":
        drop |= {"mode", "candidates", "start_noise"}
    elif cfg.mode == "mixture":
        drop |= {"candidates", "start_noise"}
    if cfg.steps == 0:
        drop |= set(HPARAM_NAMES)
    return tuple(sorted((k, v) for k, v in d.items() if k not in drop))


def measure(sampler, judge, queries, conditions, samples, seed, batch, config) -> tuple[list[dict], float]:
    """Judge verdicts for queries x samples (query i, sample j: seed + i * samples + j; a set may repeat a
    query, and repeated (query, seed) pairs would only repeat an image) and the sampler's wall seconds."""
    rows = [(i, seed + i * samples + j) for i in range(len(queries)) for j in range(samples)]
    verdicts, seconds = [], 0.0
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        tick = time.perf_counter()
        out = sampler.sample(conditions[[i for i, _ in part]], [s for _, s in part], config)
        seconds += time.perf_counter() - tick
        verdicts += judge.verdicts(out.images, [queries[i] for i, _ in part])
    return verdicts, seconds


def prior_labels(backend, judge) -> list[dict]:
    """The judge's {head: predicted value} on the prior's unconditional samples (tr0n_rt/diversity.py
    prior_samples), what open_attribute_diversity compares with."""
    from tr0n_rt import diversity

    spec = judge.entry if hasattr(judge, "entry") else judge.runtime_spec()  # judge.onnx's, or a torch judge's
    return diversity.prior_samples(backend, judge, spec["heads"]).labels


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


def fmt_row(row: dict) -> str:
    lo, hi = row["ci95"]
    div = row.get("diversity")
    div = "" if div is None else f"  {div:9.3f}"
    return (f"  {row['steps']:3d}  {row['method']:18s} {','.join(row['schemes']):22s} {row['accuracy']:7.1%}  "
            f"[{lo:6.1%}, {hi:6.1%}]  {row['images']:6d}  {row['seconds_per_sample'] * 1000:9.1f}{div}")


HEADER = (f"  {'T':>3s}  {'method':18s} {'schemes':22s} {'accuracy':>8s}  {'95% CI':^16s}  {'images':>6s}  "
          f"{'ms/sample':>9s}  {'diversity':>9s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="shapes")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), torch, tensorrt or auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime's CPU threads (default: one per core)")
    ap.add_argument("--sets", nargs="+", default=None, help="prompt sets (default: all of the world's)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--queries", type=int, default=120, help="first N prompts of each set (0: all)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--steps", type=int, nargs="+", default=DEFAULT_STEPS, help="T values (0: translator only)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-baselines", action="store_true", help="no Langevin-from-p(z) rows")
    ap.add_argument("--coverage", type=int, default=3000, help="unconditional samples for the coverage (0: none)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    folder = world_dir(args.world)
    sampler = Sampler(open_backend(args.backend, folder, precision=args.precision, threads=args.threads))
    judge = open_judge(folder)
    if judge is None:
        raise SystemExit(f"world {args.world!r} has no judge")
    sets = prompt_sets(args.world, folder, sampler.info.condition)
    chosen = args.sets or list(sets)
    unknown = [s for s in chosen if s not in sets]
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown} for world {args.world!r}; known: {', '.join(sets)}")
    words = getattr(judge, "rule", {}).get("kind") == "words"
    prior = prior_labels(sampler.backend, judge) if words else None  # once per run: the generator's own spread
    base = sampler.config
    result = {"world": args.world, "backend": args.backend, "precision": args.precision, "threads": args.threads,
              "samples_per_query": args.samples, "steps": args.steps, "seed": args.seed, "settings": base.to_dict(),
              "schemes": {name: SCHEMES[name] for name in args.schemes}, "sets": {},
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "python": sys.version.split()[0]}

    def save():
        if args.json:
            from tr0n_rt.atomic import write_bytes

            write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())

    for name in chosen:
        queries = read_queries(sets[name], args.queries)
        check_queries(judge, name, queries)
        conditions = sampler.conditions(queries)  # once per set: every row reuses them
        source = sets[name].relative_to(HERE.parent) if sets[name].is_relative_to(HERE.parent) else sets[name]
        print(f"\n{args.world} / {name}: {len(queries)} queries x {args.samples} samples ({source})\n{HEADER}",
              flush=True)
        rows, by_key = [], {}
        entry = {"source": str(source), "queries": len(queries), "rows": rows}
        result["sets"][name] = entry
        for steps in args.steps:
            plan = [(s, "translator") for s in args.schemes]
            if not args.no_baselines:
                plan += [(s, "prior") for s in args.schemes]
            for scheme, init in plan:
                cfg = scheme_config(base, SCHEMES[scheme], steps=steps, init=init)
                key = effective(cfg)
                if key in by_key:  # same settings as a row already run: name this scheme there too
                    by_key[key]["schemes"].append(scheme)
                    continue
                verdicts, seconds = measure(sampler, judge, queries, conditions, args.samples, args.seed,
                                            args.batch, cfg)
                n, k = len(verdicts), sum(bool(v["correct"]) for v in verdicts)
                lo, hi = wilson(k, n)
                method = "langevin from p(z)" if init == "prior" else "translator only" if steps == 0 else "TR0N"
                row = {"method": method, "steps": steps, "schemes": [scheme], "init": init,
                       "mode": None if init == "prior" else cfg.mode, "images": n, "correct": k,
                       "accuracy": k / n, "ci95": [lo, hi], "seconds_per_sample": seconds / n,
                       "settings": dict(key)}
                if words:
                    from tr0n_rt.diversity import open_attribute_diversity

                    div = open_attribute_diversity([q for q in queries for _ in range(args.samples)], verdicts,
                                                   prior, list(judge.heads))
                    row["diversity"] = div["mean"] if div["defined"] else None
                    row["diversity_per_head"] = div["per_head"]
                by_key[key] = row
                rows.append(row)
            for row in rows:  # this T's rows, their scheme lists complete now
                if row["steps"] == steps:
                    print(fmt_row(row), flush=True)
        save()

    if args.coverage:
        result["coverage"] = coverage(sampler, judge, args.world, args.coverage, args.seed, 250)
        print(f"\nunconditional coverage: {result['coverage']}")
    if prior is not None:
        result["diversity_prior_samples"] = len(prior)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{result['seconds']:.0f} s in all")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
