"""The reference workload against tr0n-rt, side by side in one run: images per second for N prompts.

    python benchmarks/reference_speed.py --pipeline engines/shapes --prompts 8 --preset paper
    python benchmarks/reference_speed.py --pipeline DIR --device cuda --prompts 16 --latency-prompts 4 \
        --backends torch onnxruntime:fp16 tensorrt:fp16          (GPU: the 30x / 3x targets)
reference:  export/reference_loop.py, one prompt at a time with per-prompt optimizer objects, eager
tr0n-rt:    the Sampler over each backend (default: torch, ONNX Runtime fp32), at batch 1 and batch N
            (on CUDA the torch backend replays the step as a CUDA graph)
Batch-1 configurations (the reference and tr0n-rt at batch 1) run the first --latency-prompts prompts
(default: all): one at a time, their time per image does not depend on how many, and the reference is
the slow part of the run. images/s is each configuration's own count over its own time. The reference's
images are checked against the torch backend's at batch 1 with the same noise (max abs difference).
Each configuration is timed once (a real-size run takes an hour on a CPU): compare rows that differ by
more than the machine's drift. Both sides end a prompt with the reference evaluator's final no-grad
energy pass (G, DiffAugment, CLIP, .item()), then decode.
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
    ap.add_argument("--copies", type=int, default=None, help="override the preset's A")
    ap.add_argument("--latency-prompts", type=int, default=None,
                    help="prompts for the batch-1 configurations (default: all --prompts)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                    help="tr0n-rt configurations, backend[:precision] (default: torch onnxruntime)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from tr0n_rt.atomic import write_bytes
    from tr0n_rt.backends import open_backend
    from tr0n_rt.export.reference_loop import reference_sample
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import preset

    cfg = preset(args.preset, steps=args.steps, copies=args.copies)
    torch_be = open_backend("torch", args.pipeline, device=args.device)
    prompts_file = args.pipeline / "prompts.txt"
    pool = ([q for q in prompts_file.read_text().splitlines() if q.strip()] if prompts_file.is_file() else
            ["a photo of a dog", "a red sports car", "a bowl of fruit on a table", "a mountain lake at sunset"])
    queries = [pool[i % len(pool)] for i in range(args.prompts)]
    n_latency = min(args.latency_prompts or len(queries), len(queries))
    dev = torch_be.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    ref_sampler = Sampler(torch_be, cfg)
    c = ref_sampler.conditions(queries)
    seeds = list(range(len(queries)))
    p = torch_be.pipeline
    energy, bound = p.energy(), p.generator.latent.bounds
    rows = []

    def record(name, seconds, images):
        n = len(images)
        rows.append({"config": name, "images": n, "seconds": seconds, "images_per_s": n / seconds,
                     "seconds_per_image": seconds / n})
        print(f"{name:32s} {n:4d} images {seconds:8.2f} s  {n / seconds:7.2f} images/s", flush=True)
        return images

    # The reference: per prompt, translator (no sampling), the loop with its own optimizer objects, G.
    # One untimed prompt of 2 steps first, as every tr0n-rt configuration gets (CUDA context, cuDNN plans).
    def reference(i, steps):
        rng = np.random.default_rng(seeds[i])
        augs, noises = [], []
        for _ in range(steps):  # the same host draws as the sampler's, so the images can be compared
            augs.append(torch.from_numpy(rng.random((1, cfg.copies, 8), dtype=np.float32)).to(dev))
            noises.append(torch.from_numpy(rng.standard_normal((1, p.translator.config.num_components,
                                                                 p.generator.latent.dim), dtype=np.float32)).to(dev))
        ci = torch.from_numpy(c[i:i + 1]).to(dev)
        with torch.no_grad():
            out = p.translator(ci)
        logits = out["logits"][:, :, None].repeat(1, 1, p.generator.latent.dim)
        w, pi, _ = reference_sample(energy, out["means"], logits, ci, augs, noises, cfg, bound)
        with torch.no_grad():
            z = (torch.softmax(pi, 1) * w).sum(1)
            if steps:  # the reference's evaluator ends with one no-grad pass of the whole energy and .item()
                # (G, DiffAugment over A copies, CLIP), as the sampler's final energy does; the same draw
                final_aug = torch.from_numpy(rng.random((1, cfg.copies, 8), dtype=np.float32)).to(dev)
                energy.graph_outputs(z, ci, final_aug)["energy"].sum().item()
            return p.generator(z).cpu().numpy()

    reference(0, 2)
    sync()
    tick = time.perf_counter()
    ref_images = [reference(i, cfg.steps) for i in range(n_latency)]
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

    def save():  # after every row: a run stopped from outside (or an OOM below) keeps what it measured
        base = rows[0]["images_per_s"]  # throughput ratio; at batch 1 it is also the latency ratio
        for r in rows:
            if "images_per_s" in r:
                r["speedup_vs_reference"] = r["images_per_s"] / base
        if args.json:
            write_bytes(args.json, (json.dumps({
                "pipeline": str(args.pipeline), "preset": cfg.to_dict(), "prompts": len(queries),
                "latency_prompts": n_latency, "rows": rows, "max_abs_image_diff_reference_vs_torch": check,
                "timing": "each configuration timed once (no repeats), in this order: the reference, then each "
                          "backend at batch 1 and at batch N; both sides end with the final energy pass",
                "torch_threads": torch.get_num_threads(), "device": args.device,
                "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}, indent=2) + "\n").encode())
    save()
    for name, be in backends.items():
        s = Sampler(be, cfg)
        for batch, n in ((1, n_latency), (len(queries), len(queries))):
            label = f"tr0n-rt {name} (batch {batch})"
            try:
                s.sample(c[:batch], seeds[:batch], cfg.with_overrides(steps=2))  # warm-up at this shape (capture)
                be.synchronize()
                tick = time.perf_counter()
                images = [s.sample(c[i:i + batch], seeds[i:i + batch]).images for i in range(0, n, batch)]
                images = record(label, time.perf_counter() - tick, np.concatenate(images))
            except torch.cuda.OutOfMemoryError as e:  # a batch too big for this GPU: say so, keep the rest
                rows.append({"config": label, "error": f"out of memory: {str(e).splitlines()[0]}"})
                print(f"{label:32s} out of memory", flush=True)
            if "error" in rows[-1]:
                torch.cuda.empty_cache()  # outside the except: its traceback no longer holds the failed tensors
                save()
                continue
            if be is torch_be and batch == 1:
                check = float(np.abs(images - ref_images).max())
            save()
    print("reference vs tr0n-rt torch (batch 1) images: max abs difference "
          + ("not measured" if check is None else f"{check:.2e}"))
    print("| configuration | images | s | s / image | images/s | speed-up vs reference |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['error']} |||||")
            continue
        print(f"| {r['config']} | {r['images']} | {r['seconds']:.2f} | {r['seconds_per_image']:.3f} | "
              f"{r['images_per_s']:.2f} | {r['speedup_vs_reference']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
