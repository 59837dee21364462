"""Speed of one Langevin step (energy forward + backward + update) per backend, side by side in one run.

    python benchmarks/speed.py --pipeline engines/shapes --batch 1 8 --copies 8
    python benchmarks/speed.py --pipeline DIR --device cuda --batch 1 16 --copies 8 50 \
        --backends torch onnxruntime:fp16 tensorrt:fp16 --json benchmarks/speed-gpu.json
The folder must hold pipeline.json (torch) and manifest.json (ONNX bundle). For each batch size, every
backend runs the same inputs: warm-up, then repeated timed runs; medians and the ratio to the first
backend (torch: eager on the CPU, CUDA-graph replay on a GPU) are reported (ratios < 1: faster). Outputs
are checked to agree, so a fast wrong graph cannot win. benchmarks/flops.py --timings turns the medians
into achieved FLOP/s and a fraction of the device's peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def step_inputs(info, batch: int, copies: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    k, d = info.num_components, info.latent_dim
    state = {"means": rng.standard_normal((batch, k, d), dtype=np.float32),
             "logits": rng.standard_normal((batch, k, d), dtype=np.float32),
             "velocity": np.zeros((batch, k, d), np.float32), "adam_m": np.zeros((batch, k, d), np.float32),
             "adam_v": np.zeros((batch, k, d), np.float32), "step": np.zeros(1, np.float32)}
    c = rng.standard_normal((batch, info.cond_dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return {**state, "condition": c, "aug_noise": rng.random((batch, copies, 8), dtype=np.float32),
            "sgld_noise": rng.standard_normal((batch, k, d), dtype=np.float32),
            "hparams": info.sampling.hparams(),
            **({"aesthetic_weight": np.array([info.sampling.aesthetic_weight], np.float32)} if info.aesthetic else {})}


def time_steps(backends: dict, inputs: dict, warmup: int, repeats: int) -> dict:
    """name -> (seconds per repeat, outputs). Each backend runs its warm-up and repeats as one block:
    interleaving them let onnxruntime's spinning worker threads steal the cores from torch's next run."""
    results = {}
    for name, be in backends.items():
        feeds = {k: be.to_device(v) for k, v in inputs.items()}
        for _ in range(warmup):
            out = be.run("step", feeds)
        be.synchronize()
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            out = be.run("step", feeds)
            be.synchronize()
            times.append(time.perf_counter() - tick)
        results[name] = (times, {k: be.to_host(v) for k, v in out.items()})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--copies", type=int, nargs="+", default=[8])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--precisions", nargs="+", default=["fp32"], help="onnxruntime precisions (without --backends)")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="torch onnxruntime[:fp32|fp16] tensorrt[:fp16|fp32]; the first is the reference "
                         "(default: torch, then onnxruntime at each --precisions)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from tr0n_rt.backends import open_backend
    from tr0n_rt.bench import machine_info, parse_configs

    configs = parse_configs(args.backends or ["torch"] + [f"onnxruntime:{p}" for p in args.precisions])
    backends = {}
    for name, prec in configs:
        label = (("torch eager" if args.device == "cpu" else "torch cuda graph") if name == "torch"
                 else f"{name} {prec}")
        backends[label] = open_backend(name, args.pipeline, device=args.device, precision=prec)
    first = next(iter(backends))
    info = backends[first].info
    rows = []
    for batch, copies in [(b, a) for a in args.copies for b in args.batch]:
        inputs = step_inputs(info, batch, copies)
        results = time_steps(backends, inputs, args.warmup, args.repeats)
        base = statistics.median(results[first][0])
        ref_out = results[first][1]
        for name, (times, out) in results.items():
            med = statistics.median(times)
            err = max(float(np.linalg.norm(out[k] - ref_out[k]) / max(np.linalg.norm(ref_out[k]), 1e-30))
                      for k in ("means_next", "velocity_next", "energy"))
            rows.append({"batch": batch, "copies": copies, "backend": name, "median_ms": med * 1e3,
                         "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3, "ratio_to_torch": med / base,
                         "images_per_s_per_step": batch / med, "max_rel_err_vs_torch": err})
            print(f"batch {batch:3d}  A={copies:3d}  {name:18s} median {med * 1e3:9.1f} ms  "
                  f"[{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}]  ratio {med / base:5.2f}  rel err {err:.1e}",
                  flush=True)
    result = {"pipeline": str(args.pipeline), "rows": rows, "reference_backend": first, "device": args.device,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": sys.version.split()[0], "host": machine_info(args.device)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
