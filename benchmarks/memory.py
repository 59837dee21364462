"""Peak memory of one Langevin step alone, per backend and step path, beside the bytes counted from the graphs.

    python benchmarks/memory.py --pipeline /tmp/sg2-b32 --backends onnxruntime:fp32 onnxruntime:fp16 torch \\
        --batch 1 4 16 --copies 8 25 50 --chunk 8 --json benchmarks/memory-vitb32-stylegan2-256.json
    python benchmarks/memory.py --pipeline engines/shapes --project    # the 8/16/24/80 GB table only

Each configuration (backend, path, batch, copies) runs in a fresh process: open the bundle (torch: the
pipeline), make every session the path uses, build one step's inputs; then reset the kernel's peak-RSS mark
(`echo 5 > /proc/self/clear_refs`, Linux), run one step (the step graph, or the chunked step: generator,
energy_grad per chunk, update; tr0n_rt/stepping.py), and read VmHWM. Reported:
    before     RSS right before the step: weights, the runtime, sessions (ONNX Runtime's pre-packed weights)
    peak       the highest RSS during the step (VmHWM); step = peak - before, what the step itself added
    counted    the step's largest graph activations as counted from the graph files (compare with step),
               and the total the planner predicts (memory.MemoryModel: the weights of every graph a sampler
               keeps loaded + the activations times the backend's activation factor)
    seconds    the step's time (first run: arena growth and page faults included); --repeats N adds N more
               runs and reports their median (warm)
A configuration whose counted peak exceeds --limit (default: 90% of MemAvailable) is not run ("skipped"):
the kernel would kill it, and the machine with it.

--project: from the counted bytes alone, the largest batch that fits 8, 16, 24 and 80 GB in FP16 at each A,
with the step graph and with the chunked step (memory.plan, RESERVE kept), for the table in RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tr0n_rt.memory import (
    RESERVE,
    MemoryBudgetError,
    MemoryModel,
    available_host_bytes,
    plan,
)

GIB = 2**30
DEVICES_GB = (8, 16, 24, 80)


def rss_now() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out["VmRSS"], out["VmHWM"]


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def open_backend(pipeline: Path, backend: str):
    name, _, precision = backend.partition(":")
    if name == "torch":
        from tr0n_rt.backends.torch import TorchBackend

        return TorchBackend.open(pipeline, device="cpu")
    from tr0n_rt.backends.onnxruntime import OrtBackend

    return OrtBackend.open(pipeline, precision=precision or "fp32", device="cpu")


def one(args) -> dict:
    """One configuration in this process (the child's work)."""
    from tr0n_rt.stepping import StepRunner

    sys.path.insert(0, str(Path(__file__).parent))
    from speed import step_inputs

    if args.own_arenas:  # each session its own arena (onnxruntime's default), for comparison
        from tr0n_rt.backends.onnxruntime import SESSION_SETTINGS

        SESSION_SETTINGS["cpu_arena"] = {**SESSION_SETTINGS["cpu_arena"], "shared": False}
    be = open_backend(args.pipeline, args.backends[0])
    b, a = args.batch[0], args.copies[0]
    chunk = None if args.path == "step" else min(args.chunk, a)
    graphs = ("step",) if chunk is None else ("generator", "energy_grad", "update")
    for g in graphs:
        be.load(g)
    x = step_inputs(be.info, b, a)
    state = {n: x[n] for n in ("means", "logits", "velocity", "adam_m", "adam_v", "step")}
    fixed = {n: x[n] for n in x if n not in state and n not in ("aug_noise", "sgld_noise")}
    rss_before, _ = rss_now()
    reset_peak()
    seconds = []
    for _ in range(1 + args.repeats):
        run = StepRunner(be, chunk, fixed)
        tick = time.perf_counter()
        _, e = run(state, x["aug_noise"], x["sgld_noise"])
        be.to_host(e)
        seconds.append(time.perf_counter() - tick)
    _, peak = rss_now()
    if args.repeats:  # the recomputation the chunked step pays: one generator forward at this batch
        ticks = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            be.to_host(be.run("generator", {"latent": x["means"][:, 0]})["images"])
            ticks.append(time.perf_counter() - tick)
        generator_s = statistics.median(ticks)
    e = be.to_host(e)
    assert np.isfinite(e).all(), "the step's energy is not finite"
    return {"rss_before_gib": rss_before / GIB, "peak_gib": peak / GIB, "step_gib": (peak - rss_before) / GIB,
            "first_s": seconds[0], "warm_s": statistics.median(seconds[1:]) if args.repeats else None,
            "warm_runs_s": seconds[1:], "generator_s": generator_s if args.repeats else None,
            "energy_mean": float(e.mean())}


def counted(model: MemoryModel | None, b: int, a: int, chunk: int | None) -> dict:
    """The model's prediction: counted_gib (weights of every graph the sampler keeps + activations), and
    counted_act_gib, the largest activations of the step's graphs (compare with the measured step_gib)."""
    if model is None or not model.counted:
        return {}
    parts = model.breakdown(b, a, chunk)
    factor = model.activation_factor
    return {"counted_gib": model.peak(b, a, chunk) / GIB,
            "counted_act_gib": max(v for k, v in parts.items() if k.startswith("activations_")) / factor / GIB,
            # (for ONNX Runtime on the CPU the counts are the float32 graphs', as the planner takes them)
            "activation_factor": factor, **{k + "_gib": v / GIB for k, v in parts.items()}}


def model_for(pipeline: Path, backend: str) -> MemoryModel | None:
    """The planner's model for a CPU backend (ONNX Runtime's activation factor; torch: the counts as they are)."""
    manifest = pipeline / "manifest.json"
    if not manifest.is_file():
        return None
    from tr0n_rt.backends.onnxruntime import CPU_ACTIVATION_FACTOR, CPU_FIXED_OVERHEAD

    name, _, precision = backend.partition(":")
    if name == "onnxruntime":  # as OrtBackend.memory_model on the CPU
        return MemoryModel(json.loads(manifest.read_text()), precision or "fp32",
                           activation_factor=CPU_ACTIVATION_FACTOR, counted_as="fp32",
                           fixed_overhead=CPU_FIXED_OVERHEAD)
    return MemoryModel(json.loads(manifest.read_text()), precision or "fp32")


def run_all(args) -> list[dict]:
    rows = []
    limit = args.limit * GIB if args.limit else 0.9 * (available_host_bytes() or 0)
    for backend in args.backends:
        model = model_for(args.pipeline, backend)
        for b in args.batch:
            for a in args.copies:
                for path in args.paths:
                    chunk = None if path == "step" else min(args.chunk, a)
                    row = {"backend": backend, "path": path, "batch": b, "copies": a, "chunk": chunk,
                           **counted(model, b, a, chunk)}
                    if limit and row.get("counted_gib", 0) * GIB > limit:
                        row["skipped"] = f"counted {row['counted_gib']:.1f} GiB > limit {limit / GIB:.1f} GiB"
                    else:
                        cmd = [sys.executable, __file__, "--one", "--pipeline", str(args.pipeline), "--backends",
                               backend, "--batch", str(b), "--copies", str(a), "--chunk", str(args.chunk),
                               "--path", path, "--repeats", str(args.repeats)] + (["--own-arenas"] if args.own_arenas else [])
                        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                        if done.returncode != 0:
                            row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]
                        else:
                            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    rows.append(row)
                    print(table_line(row), flush=True)
    return rows


def table_line(r: dict) -> str:
    def g(k):
        return f"{r[k]:.2f}" if r.get(k) is not None else ""

    def s(k):
        return f"{r[k]:.1f}" if r.get(k) is not None else ""

    note = r.get("skipped") or r.get("error") or ""
    path = r["path"] if r["chunk"] is None else f"{r['path']} (m = {r['chunk']})"
    return (f"| {r['backend']} | {path} | {r['batch']} | "
            f"{r['copies']} | {g('rss_before_gib')} | {g('peak_gib')} | {g('step_gib')} | {g('counted_act_gib')} | "
            f"{g('counted_gib')} | "
            f"{s('first_s')} | {s('warm_s')} | {note} |")


HEADER = ("| backend | path | batch | A | before GiB | peak GiB | step GiB | counted act. GiB | planned peak GiB | "
          "first s | warm s | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def projection(model: MemoryModel, copies=(8, 25, 50), devices=DEVICES_GB, max_batch: int = 256) -> list[dict]:
    """Largest batch (<= max_batch) per device size and A: step graph alone, and with the planner's chunks."""
    out = []
    for gb in devices:
        for a in copies:
            row = {"device_gb": gb, "copies": a}
            budget = gb * 1e9
            usable = budget * (1 - RESERVE)
            step = [b for b in range(1, max_batch + 1) if model.peak(b, a, None) <= usable]
            row["step_batch"] = max(step, default=0)
            best = 0, None
            for b in range(max_batch, 0, -1):
                try:
                    p = plan(model, budget, b, a)
                except MemoryBudgetError:
                    continue
                if p.batch == b:
                    best = b, p.chunk
                    break
            row["planned_batch"], row["planned_chunk"] = best
            out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, required=True)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime:fp32"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--copies", type=int, nargs="+", default=[8])
    ap.add_argument("--paths", nargs="+", choices=("step", "chunked"), default=["step", "chunked"])
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=0, help="warm runs after the first (time: their median)")
    ap.add_argument("--limit", type=float, default=None, help="GiB: skip configurations counted above it")
    ap.add_argument("--project", action="store_true", help="only the 8/16/24/80 GB table from the counts")
    ap.add_argument("--own-arenas", action="store_true",
                    help="onnxruntime: each session its own CPU arena (its default) instead of one shared arena")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="step", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args)))
        return 0
    result = {"pipeline": str(args.pipeline), "cpu_threads": os.cpu_count(), "reserve": RESERVE}
    model16 = model_for(args.pipeline, "tensorrt:fp16")  # a GPU: the counts as they are
    if model16 is not None and model16.counted:
        result["projection_fp16"] = projection(model16)
        print("| device GB | A | largest batch, step graph | largest batch, planned | chunk |\n|---:|---:|---:|---:|---:|")
        for r in result["projection_fp16"]:
            print(f"| {r['device_gb']} | {r['copies']} | {r['step_batch']} | {r['planned_batch']} | "
                  f"{r['planned_chunk'] or 'none'} |")
    if not args.project:
        print(HEADER)
        result["rows"] = run_all(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
