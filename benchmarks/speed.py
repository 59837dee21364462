"""Speed of one Langevin step (energy forward + backward + update) per backend, side by side in one run.

    python benchmarks/speed.py --pipeline engines/shapes --batch 1 8 --copies 8
    python benchmarks/speed.py --pipeline DIR --device cuda --batch 1 16 --copies 8 50 \
        --backends torch onnxruntime:fp16 tensorrt:fp16 --json benchmarks/speed-gpu.json
The folder must hold pipeline.json (torch) and manifest.json (ONNX bundle). For each batch size, every
backend runs the same inputs: warm-up, then repeated timed runs; medians and the ratio to the first
backend (torch: eager on the CPU, CUDA-graph replay on a GPU) are reported (ratios < 1: faster). Outputs
are checked to agree, so a fast wrong graph cannot win. benchmarks/flops.py --timings turns the medians
into achieved FLOP/s and a fraction of the device's peak.

--isolate N runs every backend in a process of its own, N rounds in rotating order, and pools the
repeats of all rounds. Use it on the CPU: in one process, onnxruntime's thread pool slows torch's next
runs (digits, batch 8: torch 31 ms alone, 37-40 ms right after onnxruntime, even 1 s later), and a
shared VM drifts between fast and slow phases that rotating rounds spread over every backend.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
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
            **info.sampling.hparams(),
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


def label_of(name: str, precision: str, device: str) -> str:
    if name == "torch":
        return "torch eager" if device == "cpu" else "torch cuda graph"
    return f"{name} {precision}"


def open_backends(configs, pipeline: Path, device: str) -> dict:
    from tr0n_rt.backends import open_backend

    return {label_of(n, p, device): open_backend(n, pipeline, device=device, precision=p) for n, p in configs}


def measure(backends: dict, shapes, warmup: int, repeats: int) -> dict:
    """{(batch, copies): {label: (seconds per repeat, outputs)}}, every backend in this process."""
    info = next(iter(backends.values())).info
    return {(b, a): time_steps(backends, step_inputs(info, b, a), warmup, repeats) for b, a in shapes}


def measure_isolated(args, configs, shapes, rounds: int) -> dict:
    """As measure(), each backend in a fresh process per round, rounds in rotating order; the repeats of
    all rounds pooled, the outputs of the first round kept."""
    merged: dict = {shape: {} for shape in shapes}
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        for r in range(rounds):
            for i in range(len(configs)):
                name, precision = configs[(i + r) % len(configs)]
                out = Path(tmp) / f"{name}-{precision}-{r}.json"
                cmd = [sys.executable, __file__, "--pipeline", str(args.pipeline), "--device", args.device,
                       "--batch", *map(str, args.batch), "--copies", *map(str, args.copies), "--warmup",
                       str(args.warmup), "--repeats", str(args.repeats), "--worker", f"{name}:{precision}",
                       "--json", str(out)] + (["--tf32"] if args.tf32 else [])
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                label = label_of(name, precision, args.device)
                for row in json.loads(out.read_text()):
                    times, outputs = merged[(row["batch"], row["copies"])].get(label, ([], None))
                    merged[(row["batch"], row["copies"])][label] = (
                        times + row["seconds"], outputs or {k: np.asarray(v, np.float32) for k, v in row["outputs"].items()})
    order = [label_of(n, p, args.device) for n, p in configs]
    return {shape: {label: merged[shape][label] for label in order} for shape in shapes}


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
    ap.add_argument("--isolate", type=int, default=0, metavar="ROUNDS",
                    help="each backend in its own process, ROUNDS rounds in rotating order (see above)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one backend, for --isolate
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: let float32 matmuls and convolutions use TF32 tensor cores (default: off, so the "
                         "float32 rows are float32; the JSON records it and flops.py picks the matching peak)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from tr0n_rt.bench import machine_info, parse_configs

    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # torch's cuDNN default is on: state it, either way
    torch.backends.cudnn.allow_tf32 = args.tf32
    configs = parse_configs(args.backends or ["torch"] + [f"onnxruntime:{p}" for p in args.precisions])
    shapes = [(b, a) for a in args.copies for b in args.batch]
    if args.worker:
        (label, be), = open_backends(parse_configs([args.worker]), args.pipeline, args.device).items()
        rows = [{"batch": b, "copies": a, "seconds": r[label][0],
                 "outputs": {k: v.tolist() for k, v in r[label][1].items()}}
                for (b, a), r in measure({label: be}, shapes, args.warmup, args.repeats).items()]
        args.json.write_text(json.dumps(rows))
        return 0
    if args.isolate:
        measured = measure_isolated(args, configs, shapes, args.isolate)
    else:
        measured = measure(open_backends(configs, args.pipeline, args.device), shapes, args.warmup, args.repeats)
    first = label_of(*configs[0], args.device)
    rows = []
    for (batch, copies), results in measured.items():
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
              "isolated_rounds": args.isolate, "repeats_per_round": args.repeats,
              "tf32": bool(args.tf32 and args.device.startswith("cuda")),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": sys.version.split()[0], "host": machine_info(args.device)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
