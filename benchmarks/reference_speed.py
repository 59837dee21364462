"""The reference workload against tr0n-rt, side by side in one run: images per second for N prompts.

    python benchmarks/reference_speed.py --pipeline engines/shapes --prompts 8 --preset paper
    python benchmarks/reference_speed.py --pipeline DIR --device cuda --prompts 16 \
        --backends torch onnxruntime:fp16 tensorrt:fp16          (GPU: the 30x / 3x targets)
reference:  export/reference_loop.py, one prompt at a time with per-prompt optimizer objects, eager
tr0n-rt:    the Sampler over each backend (default: torch, ONNX Runtime fp32), at batch 1 and batch N
            (on CUDA the torch backend replays the step as a CUDA graph)
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                    help="tr0n-rt configurations, backend[:precision] (default: torch onnxruntime)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from tr0n_rt.backends import open_backend
    from tr0n_rt.export.reference_loop import reference_sample
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import preset

    cfg = preset(args.preset, steps=args.steps)
    torch_be = open_backend("torch", args.pipeline, device=args.device)
    prompts_file = args.pipeline / "prompts.txt"
    pool = ([q for q in prompts_file.read_text().splitlines() if q.strip()] if prompts_file.is_file() else
            ["a photo of a dog", "a red sports car", "a bowl of fruit on a table", "a mountain lake at sunset"])
    queries = [pool[i % len(pool)] for i in range(args.prompts)]
    dev = torch_be.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
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
    sync()
    tick = time.perf_counter()
    ref_images = []
    for i in range(len(queries)):
        rng = np.random.default_rng(seeds[i])
        augs, noises = [], []
        for _ in range(cfg.steps):  # the same host draws as the sampler's, so the images can be compared
            augs.append(torch.from_numpy(rng.random((1, cfg.copies, 8), dtype=np.float32)).to(dev))
            noises.append(torch.from_numpy(rng.standard_normal((1, p.translator.config.num_components,
                                                                 p.generator.latent.dim), dtype=np.float32)).to(dev))
        ci = torch.from_numpy(c[i:i + 1]).to(dev)
        with torch.no_grad():
            out = p.translator(ci)
        logits = out["logits"][:, :, None].repeat(1, 1, p.generator.latent.dim)
        w, pi, _ = reference_sample(energy, out["means"], logits, ci, augs, noises, cfg, bound)
        with torch.no_grad():
            ref_images.append(p.generator((torch.softmax(pi, 1) * w).sum(1)).cpu().numpy())
    sync()
    ref_images = record("reference loop (batch 1, eager)", time.perf_counter() - tick, np.concatenate(ref_images))

    backends = {}
    for spec in args.backends:
        name, _, precision = spec.partition(":")
        label = f"{name} {precision or 'fp32'}" if name != "torch" else (
            "torch CUDA graph" if dev.type == "cuda" else "torch eager")
        backends[label] = torch_be if name == "torch" else open_backend(name, args.pipeline, device=args.device,
                                                                         precision=precision or "fp32")
    check = None
    for name, be in backends.items():
        s = Sampler(be, cfg)
        s.sample(c[:1], seeds[:1], cfg.with_overrides(steps=2))  # warm-up (sessions, allocator)
        for batch in (1, len(queries)):
            tick = time.perf_counter()
            images = [s.sample(c[i:i + batch], seeds[i:i + batch]).images for i in range(0, len(queries), batch)]
            images = record(f"tr0n-rt {name} (batch {batch})", time.perf_counter() - tick, np.concatenate(images))
            if be is torch_be and batch == 1:
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
                                         "torch_threads": torch.get_num_threads(), "device": args.device,
                                         "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
