"""GPU check of the captured torch paths (no TensorRT needed): parity with eager and speed-ups.

    python benchmarks/gpu_check.py                      # shapes, digits and a random ViT-B-32 + DCGAN-64
    python benchmarks/gpu_check.py --pipelines engines/digits --batch 1 8 --steps 10

Needs an NVIDIA GPU and torch with CUDA; cuda-python is optional (it adds a check of the cuda-python
device). Without a GPU it says so and exits 0. `--device cpu` is a dry run of the plumbing on a CPU: the
"graph" backend then runs eagerly too (graphs are captured on CUDA only), and the device layer runs on
numpy (HostArrays); its figures say nothing about speed-ups. Everything runs in float32 with TF32 off
(--tf32 turns it on), so eager and captured runs must agree to float32 rounding.

Per pipeline and batch size (1, 8, 32), eager vs CUDA graph side by side:
  sampler   the full torch backend: Sampler.sample (translator, T steps with host noise, generator);
            TorchBackend(cuda_graphs=False) vs (cuda_graphs=True). Median seconds per sample call.
  step      the fallback's step: backend.run("step") on device inputs, state fed back, as the TensorRT
            backend's torch-hybrid path calls it. Median milliseconds per step.
  parity    one step from the same state: max |graph - eager| <= STEP_ATOL + STEP_RTOL |eager| on state
            and energy; a whole sample: images max |graph - eager| <= SAMPLE_ATOL.
Plus the device layer of the TensorRT backend (tr0n_rt/backends/step_graphs.py): StepGraphs' two ping-pong
graphs captured and replayed with torch buffers and with cuda-python buffers, results checked.
Writes JSON (--out) and prints a markdown table for benchmarks/RESULTS.md. Stays under --budget
seconds (default 420): rows that would start later are skipped and marked so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

STEP_ATOL, STEP_RTOL = 1e-5, 1e-5  # float32, TF32 off: graph replay runs eager's kernels; atomics may reorder sums
SAMPLE_ATOL = 1e-3  # images in [-1, 1] after T steps: SGLD amplifies rounding differences a little
DEFAULT_PIPELINES = ("engines/shapes", "engines/digits", "vit")


# --- pure helpers (tested on the CPU) -----------------------------------------------------------------
def median_ms(seconds: list[float], per: int = 1) -> float:
    """Median of timings in seconds, in milliseconds per `per` units (steps)."""
    return statistics.median(seconds) * 1e3 / per


def speedup(eager: float | None, graph: float | None) -> float | None:
    return None if not eager or not graph else eager / graph


def max_excess(graph: np.ndarray, eager: np.ndarray, atol: float, rtol: float = 0.0) -> tuple[float, bool]:
    """(max |graph - eager|, whether every element is within atol + rtol |eager|)."""
    graph, eager = np.asarray(graph, np.float64), np.asarray(eager, np.float64)
    diff = np.abs(graph - eager)
    ok = bool(np.isfinite(graph).all() and (diff <= atol + rtol * np.abs(eager)).all())
    return float(diff.max()) if diff.size else 0.0, ok


def pipeline_sources(names, root: Path = ROOT) -> list[tuple[str, Path | None, str | None]]:
    """(label, folder or None, why skipped or None) per requested pipeline; "vit" is built on the fly."""
    out = []
    for name in names:
        if name == "vit":
            out.append(("vit-b-32+dcgan-64", None, None))
            continue
        folder = Path(name) if Path(name).is_absolute() else root / name
        why = None if (folder / "pipeline.json").is_file() else f"{folder} holds no pipeline.json"
        out.append((folder.name, folder, why))
    return out


def save(result: dict, path: Path) -> None:
    """Atomically (tr0n_rt.atomic): a reader sees the previous complete file or this one."""
    from tr0n_rt.atomic import write_bytes

    write_bytes(path, (json.dumps(result, indent=2, default=float) + "\n").encode())


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(result: dict) -> str:
    gpu = result.get("gpu", {})
    lines = [f"GPU: {gpu.get('name', '?')} ({gpu.get('compute_capability', '?')}), torch {result.get('torch', '?')}, "
             f"CUDA {result.get('cuda', '?')}, TF32 {'on' if result.get('tf32') else 'off'}, "
             f"T = {result.get('steps')} steps, A = {result.get('copies')} copies; medians of "
             f"{result.get('repeats')} runs after {result.get('warmup')} warm-up runs.",
             "",
             "| pipeline | batch | sampler eager s | sampler graph s | speed-up | step eager ms | step graph ms | "
             "speed-up | step max abs diff | images max abs diff | parity |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result.get("rows", []):
        if r.get("skipped"):
            lines.append(f"| {r['pipeline']} | {r.get('batch', '-')} | skipped: {r['skipped']} |||||||||")
            continue
        cells = [r["pipeline"], r["batch"], fmt(r["sample_eager_s"], ".3f"), fmt(r["sample_graph_s"], ".3f"),
                 fmt(r["sample_speedup"], ".2f") + "x", fmt(r["step_eager_ms"], ".2f"), fmt(r["step_graph_ms"], ".2f"),
                 fmt(r["step_speedup"], ".2f") + "x", fmt(r["step_max_diff"], ".1e"), fmt(r["images_max_diff"], ".1e"),
                 "ok" if r["parity_ok"] else "FAIL"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for d in result.get("device_checks", []):
        lines.append(f"\nDevice check {d['device']}: {'ok' if d['ok'] else 'FAIL'} ({d['detail']})")
    return "\n".join(lines)


# --- pipelines --------------------------------------------------------------------------------------------
def build_vit_pipeline(folder: Path, seed: int = 0) -> Path:
    """A random-weight ViT-B-32 + DCGAN-64 text pipeline (benchmarks/random_pipeline.py)."""
    from random_pipeline import build_random_pipeline

    from tr0n_rt.settings import SamplingConfig

    return build_random_pipeline(folder, "ViT-B-32", "dcgan", 64, seed, SamplingConfig(steps=10, copies=4))


def conditions(info, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if info.condition == "class":
        c = np.zeros((n, info.cond_dim), np.float32)
        c[np.arange(n), rng.integers(0, info.cond_dim, n)] = 1
        return c
    c = rng.standard_normal((n, info.cond_dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def step_inputs(be, batch: int, copies: int, seed: int = 0) -> dict:
    """benchmarks/speed.py's step inputs (class conditions one-hot), on the backend's device."""
    from speed import step_inputs as host_step_inputs

    x = host_step_inputs(be.info, batch, copies, seed)
    x["condition"] = conditions(be.info, batch, seed)
    return {n: be.to_device(v) for n, v in x.items()}


def time_steps(be, inputs: dict, steps: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per loop of `steps` steps, the state fed back (device noise reused)."""
    from tr0n_rt.graphs import STATE_NAMES

    def loop():
        state = {n: inputs[n] for n in STATE_NAMES}
        for _ in range(steps):
            out = be.run("step", {**inputs, **state})
            state = {n: out[f"{n}_next"] for n in STATE_NAMES}
    for _ in range(warmup):
        loop()
    be.synchronize()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        loop()
        be.synchronize()
        times.append(time.perf_counter() - tick)
    return times


def time_samples(sampler, c, cfg, warmup: int, repeats: int):
    seeds = list(range(len(c)))
    for _ in range(warmup):
        out = sampler.sample(c, seeds, cfg)
    times = []
    for _ in range(repeats):
        sampler.backend.synchronize()
        tick = time.perf_counter()
        out = sampler.sample(c, seeds, cfg)
        times.append(time.perf_counter() - tick)
    return times, out


def check_pipeline(label: str, folder: Path, args, deadline: float, device: str = "cuda", record=None) -> list[dict]:
    """Rows of one pipeline; record(row) is called as each row is done (the caller saves it at once)."""
    import torch

    from tr0n_rt.backends.torch import TorchBackend
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    eager = TorchBackend.open(folder, device=device, cuda_graphs=False)
    graph = TorchBackend.open(folder, device=device, cuda_graphs=True)
    cfg = SamplingConfig(steps=args.steps, copies=args.copies)
    rows = []
    for batch in args.batch:
        if time.perf_counter() > deadline:
            rows.append({"pipeline": label, "batch": batch, "skipped": "time budget"})
            record and record(rows[-1])
            continue
        row = {"pipeline": label, "batch": batch}
        if device != "cpu":  # this row's peak, not the largest of every row before it
            torch.cuda.reset_peak_memory_stats()
        # parity: one step from the same state, then whole samples
        inputs = step_inputs(eager, batch, args.copies)
        a = {k: eager.to_host(v) for k, v in eager.run("step", inputs).items()}
        b = {k: graph.to_host(v) for k, v in graph.run("step", inputs).items()}
        checks = [max_excess(b[k], a[k], STEP_ATOL, STEP_RTOL) for k in a]
        row["step_max_diff"] = max(d for d, _ in checks)
        step_ok = all(ok for _, ok in checks)
        c = conditions(eager.info, batch, seed=1)
        te, out_e = time_samples(Sampler(eager), c, cfg, args.warmup, args.repeats)
        tg, out_g = time_samples(Sampler(graph), c, cfg, args.warmup, args.repeats)
        row["images_max_diff"], images_ok = max_excess(out_g.images, out_e.images, SAMPLE_ATOL)
        row["parity_ok"] = step_ok and images_ok
        row["sample_eager_s"], row["sample_graph_s"] = statistics.median(te), statistics.median(tg)
        row["sample_speedup"] = speedup(row["sample_eager_s"], row["sample_graph_s"])
        # the fallback's step on device inputs
        row["step_eager_ms"] = median_ms(time_steps(eager, inputs, args.steps, args.warmup, args.repeats), args.steps)
        row["step_graph_ms"] = median_ms(time_steps(graph, inputs, args.steps, args.warmup, args.repeats), args.steps)
        row["step_speedup"] = speedup(row["step_eager_ms"], row["step_graph_ms"])
        row["graph_stats"] = graph.graph_stats
        # both backends' weights stay resident: the peak of eager and graph runs of this batch together
        row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None
        rows.append(row)
        record and record(row)
        print(f"  {label} batch {batch}: step {row['step_eager_ms']:.2f} -> {row['step_graph_ms']:.2f} ms "
              f"({row['step_speedup']:.2f}x), sample {row['sample_speedup']:.2f}x, parity "
              f"{'ok' if row['parity_ok'] else 'FAIL'} (step {row['step_max_diff']:.1e}, images "
              f"{row['images_max_diff']:.1e})", flush=True)
    del eager, graph
    if device != "cpu":
        torch.cuda.empty_cache()
    return rows


# --- the TensorRT backend's device layer, with a stand-in engine --------------------------------------------
def check_device(kind: str, steps: int = 6) -> dict:
    """StepGraphs with a stand-in "engine" made of device copies: means_next <- sgld_noise, velocity_next <-
    means, energy <- condition[:, 0]. After each step, means must be that step's noise (the fixed input was
    uploaded before the replay) and velocity the previous step's noise (the graph read the set the previous
    graph wrote)."""
    from tr0n_rt.backends.cuda import open_device
    from tr0n_rt.backends.step_graphs import StepGraphs

    dev = open_device(kind)
    b, k, d = 4, 2, 8
    names = {"means": "means_next", "velocity": "velocity_next"}
    specs = {"means": ((b, k, d), "float32"), "velocity": ((b, k, d), "float32"), "means_next": ((b, k, d), "float32"),
             "velocity_next": ((b, k, d), "float32"), "sgld_noise": ((b, k, d), "float32"),
             "condition": ((b, 1), "float32"), "energy": ((b, 1), "float32")}

    def prepare(key, x, slot):
        def enqueue():
            dev.copy(x["means_next"], x["sgld_noise"])
            dev.copy(x["velocity_next"], x["means"])
            dev.copy(x["energy"], x["condition"])
        return enqueue

    sg = StepGraphs(dev, names, ("sgld_noise", "condition"), ("energy",), set(specs), prepare,
                    lambda key: {n: (s, t) for n, (s, t) in specs.items() if n not in names.values()}, True)
    rng = np.random.default_rng(0)
    state = {"means": np.zeros((b, k, d), np.float32), "velocity": np.zeros((b, k, d), np.float32)}
    previous, ok, energies = state["means"], True, []
    for t in range(steps):
        noise = rng.standard_normal((b, k, d)).astype(np.float32)
        cond = np.full((b, 1), t, np.float32)
        out = sg.run((b, 1, k), {**state, "sgld_noise": noise, "condition": cond}, rows=b)
        ok &= np.array_equal(dev.to_host(out["means_next"]), noise)
        ok &= np.array_equal(dev.to_host(out["velocity_next"]), previous)
        energies.append(out["energy"])
        state, previous = {"means": out["means_next"], "velocity": out["velocity_next"]}, noise
    ok &= all(float(dev.to_host(e)[0, 0]) == t for t, e in enumerate(energies))  # energies were cloned
    stats = sg.stats.as_dict()
    ok &= stats["graphs"][0]["captures"] == 2 and stats["graphs"][0]["replays"] == steps and stats["state_copies"] == 1
    return {"device": dev.name, "ok": bool(ok), "detail": f"{steps} replays of 2 ping-pong graphs, stats {stats}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipelines", nargs="+", default=list(DEFAULT_PIPELINES),
                    help="pipeline folders, and/or 'vit' for the random ViT-B-32 + DCGAN-64 pipeline")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=10, help="Langevin steps T per sample and per timed loop")
    ap.add_argument("--copies", type=int, default=4, help="augmented copies A")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later rows are skipped (default 420)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 (parity then needs looser tolerances)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cuda (default), or cpu for a dry run of the plumbing (no speed-ups, no capture)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check.json")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to check (the GPU check needs torch with CUDA)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no NVIDIA GPU present (torch.cuda.is_available() is False): nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    from tr0n_rt.backends.cuda import current_gpu

    name, cc = current_gpu() if args.device == "cuda" else ("CPU dry run", "-")
    result = {"gpu": {"name": name, "compute_capability": cc}, "torch": torch.__version__, "cuda": torch.version.cuda,
              "tf32": args.tf32, "steps": args.steps, "copies": args.copies, "warmup": args.warmup,
              "repeats": args.repeats, "tolerances": {"step_atol": STEP_ATOL, "step_rtol": STEP_RTOL,
                                                      "sample_images_atol": SAMPLE_ATOL},
              "rows": [], "device_checks": []}
    print(f"GPU check on {name} ({cc}), torch {torch.__version__}", flush=True)
    for kind in ("torch", "cuda-python") if args.device == "cuda" else ("host",):
        try:
            result["device_checks"].append(check_device(kind))
        except Exception as e:  # cuda-python not installed, or a real failure: both reported
            result["device_checks"].append({"device": kind, "ok": False, "detail": f"{type(e).__name__}: {e}"})
    deadline = start + args.budget

    def record(row):  # saved row by row: a run stopped from outside keeps what it measured
        result["rows"].append(row)
        result["seconds"] = round(time.perf_counter() - start, 1)
        save(result, args.out)
    save(result, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for label, folder, why in pipeline_sources(args.pipelines):
            if why or time.perf_counter() > deadline:
                record({"pipeline": label, "skipped": why or "time budget"})
                continue
            try:
                if folder is None:
                    folder = build_vit_pipeline(Path(tmp))
                check_pipeline(label, folder, args, deadline, args.device, record)
            except Exception as e:
                record({"pipeline": label, "skipped": f"error: {type(e).__name__}: {e}"})
                print(f"  {label}: {type(e).__name__}: {e}", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    save(result, args.out)
    print(markdown_table(result))
    print(f"\nwritten {args.out} in {result['seconds']} s")
    bad = [r for r in result["rows"] if not r.get("skipped") and not r["parity_ok"]]
    return 1 if bad or not all(d["ok"] for d in result["device_checks"] if d["device"] in ("torch", "host")) else 0


if __name__ == "__main__":
    sys.exit(main())
