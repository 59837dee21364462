"""The reference workload against tr0n-rt, side by side in one run: images per second for N prompts.

    python benchmarks/reference_speed.py --pipeline engines/shapes --prompts 8 --preset paper
reference:  export/reference_loop.py, one prompt at a time with per-prompt optimizer objects, eager
tr0n-rt:    the Sampler over torch eager and ONNX Runtime (fp32), at batch 1 and batch N
Every configuration runs the same prompts; the reference's images are checked against the torch
backend's at batch 1 with the same noise (max abs difference reported).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, default=Path("engines/shapes"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's T")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from tr0n_rt.backends import open_backend
    from tr0n_rt.export.reference_loop import reference_sample
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import preset

    cfg = preset(args.preset, steps=args.steps)
    torch_be = open_backend("torch", args.pipeline)
    queries = [q for q in (args.pipeline / "prompts.txt").read_text().splitlines() if q.strip()][:args.prompts]
    ref_sampler = Sampler(torch_be, cfg)
    c = ref_sampler.conditions(queries)
    seeds = list(range(len(queries)))
    p = torch_be.pipeline
    energy, bound = torch_be.energy, torch_be.bound
    rows = []

    def record(name, seconds, images):
        rows.append({"config": name, "seconds": seconds, "images_per_s": len(queries) / seconds})
        print(f"{name:32s} {seconds:8.2f} s  {len(queries) / seconds:7.2f} images/s", flush=True)
        return images

    # The reference: per prompt, translator (no sampling), the loop with its own optimizer objects, G.
    tick = time.perf_counter()
    ref_images = []
    for i in range(len(queries)):
        rng = np.random.default_rng(seeds[i])
        augs, noises = [], []
        for _ in range(cfg.steps):  # the same host draws as the sampler's, so the images can be compared
            augs.append(torch.from_numpy(rng.random((1, cfg.copies, 8), dtype=np.float32)))
            noises.append(torch.from_numpy(rng.standard_normal((1, p.translator.config.num_components,
                                                                 p.generator.latent.dim), dtype=np.float32)))
        ci = torch.from_numpy(c[i:i + 1])
        with torch.no_grad():
            out = p.translator(ci)
        logits = out["logits"][:, :, None].repeat(1, 1, p.generator.latent.dim)
        w, pi, _ = reference_sample(energy, out["means"], logits, ci, augs, noises, cfg, bound)
        with torch.no_grad():
            ref_images.append(p.generator((torch.softmax(pi, 1) * w).sum(1)).numpy())
    ref_images = record("reference loop (batch 1, eager)", time.perf_counter() - tick, np.concatenate(ref_images))

    backends = {"torch eager": torch_be, "onnxruntime fp32": open_backend("onnxruntime", args.pipeline)}
    check = None
    for name, be in backends.items():
        s = Sampler(be, cfg)
        s.sample(c[:1], seeds[:1], cfg.with_overrides(steps=2))  # warm-up (sessions, allocator)
        for batch in (1, len(queries)):
            tick = time.perf_counter()
            images = [s.sample(c[i:i + batch], seeds[i:i + batch]).images for i in range(0, len(queries), batch)]
            images = record(f"tr0n-rt {name} (batch {batch})", time.perf_counter() - tick, np.concatenate(images))
            if name == "torch eager" and batch == 1:
                check = float(np.abs(images - ref_images).max())
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_reference"] = base / r["seconds"]
    print(f"reference vs tr0n-rt torch (batch 1) images: max abs difference {check:.2e}")
    print("| configuration | s | images/s | speed-up vs reference |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['seconds']:.2f} | {r['images_per_s']:.2f} | {r['speedup_vs_reference']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"pipeline": str(args.pipeline), "preset": cfg.to_dict(), "prompts": len(queries),
                                         "rows": rows, "max_abs_image_diff_reference_vs_torch": check,
                                         "torch_threads": torch.get_num_threads()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
