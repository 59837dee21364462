"""`tr0n-rt bench`: a quick benchmark of the whole sampler, per backend and batch size, side by side.

Every configuration (backend, precision, batch) runs in a fresh Python process, so its cold start and
its peak memory are its own:
    startup     interpreter start (spawn to first line)
    import      numpy, tr0n_rt and the engine's module (onnxruntime, or torch + the export adapters)
    load        open_backend, and every graph the sampler uses loaded (sessions created)
    first image the first encode + sample at this batch (lazy initialisation included)
then `warmup` untimed and `repeats` timed encode + sample calls: medians and [min, max]. Stages per
call: encode (text encoder, around Sampler.encode_text), translate, Langevin (per step: the total / T),
final energy, decode, as the sampler records them. Peak memory: the process's peak RSS (getrusage), beside
the memory plan the sampler ran (tr0n_rt/memory.py: step graph or chunks, sub-batch, predicted peak), and
on CUDA torch's max_memory_allocated (torch backend) and the process's GPU memory as nvidia-smi reports
it at the end (onnxruntime and TensorRT allocate outside torch).

The module imports no torch: only a torch configuration's process does.
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

from .jsonfile import read_json_file
from .chart import bar_panel, stack
from .cli_args import (
    MAX_BATCH,
    MAX_COPIES,
    MAX_REPEATS,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    add_memory_args,
    pipeline_folder,
    seconds,
    whole_number,
)
from .errors import BundleError, ConfigError, Tr0nError

STAGES = ("encode", "translate", "langevin", "final_energy", "decode")
MARK = "TR0N_RT_BENCH_ROW "
BOOT = ("import sys, time; t0, w0 = time.perf_counter(), time.time(); "
        "from tr0n_rt.bench import child; child(sys.argv[1], t0, w0)")
DEFAULT_PROMPT = "a red circle on a white background"


# --- one configuration, in its own process ------------------------------------------------------------
def child(job_json: str, t0: float, w0: float) -> None:
    """Entry point of a configuration's process: measures, prints one marked JSON line."""
    job = json.loads(job_json)
    row = {k: job[k] for k in ("backend", "precision", "device", "batch")}
    try:
        row.update(measure(job, t0))
        row["startup_s"] = w0 - job["spawned"]
    except Exception as e:  # noqa: BLE001 -- one broken configuration must not hide the others' results
        row["error"] = f"{type(e).__name__}: {e}"
    print(MARK + json.dumps(row), flush=True)


def measure(job: dict, t0: float) -> dict:
    import_engine(job["backend"], job.get("threads"))
    from .backends import open_backend
    from .sampler import Sampler
    import_s = time.perf_counter() - t0

    tick = time.perf_counter()
    folder = Path(job["folder"])
    be = open_backend(job["backend"], folder, device=job["device"], precision=job["precision"],
                      threads=job.get("threads"))
    cfg = be.info.sampling.with_overrides(steps=job["steps"], copies=job["copies"])
    sampler = Sampler(be, cfg, memory_budget=job.get("memory_budget", "auto"), chunk=job.get("chunk"))
    preload(be, sampler.plan(job["batch"], cfg.copies).chunk is not None)
    load_s = time.perf_counter() - tick

    queries = bench_queries(be.info, folder, job["batch"])
    seeds = list(range(len(queries)))

    def run() -> dict:
        tick = time.perf_counter()
        c = sampler.conditions(queries)
        encode = time.perf_counter() - tick
        out = sampler.sample(c, seeds)
        be.synchronize()
        plans.append(out.plan)
        return {"total": time.perf_counter() - tick, "encode": encode, **out.seconds}

    plans = []
    first = run()
    for _ in range(job["warmup"]):
        run()
    runs = [run() for _ in range(job["repeats"])]
    totals = [r["total"] for r in runs]
    median = statistics.median(totals)
    stages = {s: statistics.median(r.get(s, 0.0) for r in runs) * 1e3 for s in STAGES}
    row = {"copies": cfg.copies, "steps": cfg.steps, "components": be.info.num_components,
           "import_s": import_s, "load_s": load_s, "first_image_s": first["total"],
           "batch_ms": median * 1e3, "batch_ms_min": min(totals) * 1e3, "batch_ms_max": max(totals) * 1e3,
           "ms_per_image": median * 1e3 / job["batch"], "images_per_s": job["batch"] / median,
           "stages_ms": stages, "step_ms": stages["langevin"] / cfg.steps if cfg.steps else None,
           "peak_rss_mib": peak_rss_mib(), "plan": plans[-1], "torch_imported": "torch" in sys.modules,
           "repeats": job["repeats"], "warmup": job["warmup"]}
    row.update(gpu_memory(job["device"]))
    row.update(thread_info())
    if be.graph_sources:
        row["graph_sources"] = be.graph_sources
    return row


def import_engine(backend: str, threads: int | None) -> None:
    """Imports the engine up front, so its import counts as import and not as load."""
    if backend == "torch":
        import torch

        import tr0n_rt.export.pipeline  # noqa: F401  (open_clip and the adapters)

        if threads:
            torch.set_num_threads(threads)
    elif backend == "onnxruntime":
        import onnxruntime  # noqa: F401
    elif backend == "tensorrt":
        import tensorrt  # noqa: F401


def preload(be, chunked: bool = False) -> None:
    """Prepares every graph the sampler will run now (onnxruntime creates sessions on first use); chunked:
    the chunked step's graphs instead of the step graph."""
    from .graphs import CHUNKED_STEP, sampling_graphs

    graphs = sampling_graphs(be.info.condition)
    for graph in ([g for g in graphs if g != "step"] + list(CHUNKED_STEP) if chunked else graphs):
        be.load(graph)


def bench_queries(info, folder: Path, n: int) -> list[str]:
    """n queries: the pipeline's prompts.txt (or class names), cycled."""
    if info.condition == "class":
        pool = list(info.classes or [])
    else:
        path = folder / "prompts.txt"
        pool = [q.strip() for q in path.read_text().splitlines() if q.strip()] if path.is_file() else []
        pool = pool or [DEFAULT_PROMPT]
    return [pool[i % len(pool)] for i in range(n)]


def peak_rss_mib() -> float:
    """This process's peak resident set size. Linux: VmHWM of /proc/self/status, the high-water mark
    of this program's own memory (getrusage's ru_maxrss is kept across fork + exec, so a child of a
    large process would report its parent's size). Elsewhere: getrusage (macOS reports bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def gpu_memory(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    out = {"gpu_process_mib": gpu_process_mib()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_peak_torch_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def gpu_process_mib() -> float | None:
    """GPU memory this process holds now (nvidia-smi); arenas do not shrink, so about its peak."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()):  # in a container nvidia-smi may list host PIDs: then no match
            try:
                return float(mib)
            except ValueError:  # "[N/A]" (some drivers, MIG): unknown, not an error that loses the row
                return None
    return None


def thread_info() -> dict:
    out = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
    return out


# --- the parent: configurations, processes, table -------------------------------------------------------
def available_configs(folder: Path, device: str) -> list[tuple[str, str]]:
    """(backend, precision) for every engine installed here that this folder can run."""
    configs = []
    if (folder / "pipeline.json").is_file() and installed("torch"):
        configs.append(("torch", "fp32"))
    manifest = folder / "manifest.json"
    if manifest.is_file() and installed("onnxruntime"):
        graphs = read_json(manifest).get("graphs", {})
        graphs = graphs if isinstance(graphs, dict) else {}
        for prec in ("fp32", "fp16"):
            if graphs and all(isinstance(g, dict) and isinstance(g.get("files"), dict) and prec in g["files"]
                              for g in graphs.values()):
                configs.append(("onnxruntime", prec))
    return configs


def read_json(path: Path) -> dict:
    """A JSON object file of the folder benchmarked; BundleError when it is damaged."""
    data = read_json_file(path, 16 << 20, BundleError, f"re-export or rebuild {path.parent}")
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object: re-export or rebuild {path.parent}")
    return data


def installed(module: str) -> bool:
    from .backends import installed as found

    return found(module)


def parse_configs(names: list[str]) -> list[tuple[str, str]]:
    """["torch", "onnxruntime:fp16"] -> [("torch", "fp32"), ("onnxruntime", "fp16")]."""
    out = []
    for name in names:
        backend, _, prec = name.partition(":")
        if backend not in ("torch", "onnxruntime", "tensorrt"):
            raise ConfigError(f"unknown backend {backend!r} in --backends; use torch, onnxruntime[:fp32|fp16] "
                              "or tensorrt[:fp16|fp32]")
        out.append((backend, prec or ("fp16" if backend == "tensorrt" else "fp32")))
    return out


def run_config(job: dict, timeout: float, env: dict | None = None) -> dict:
    """Runs one configuration in a fresh process; returns its row (with "error" when it failed)."""
    job = {**job, "spawned": time.time()}
    tick = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", BOOT, json.dumps(job)], check=False, capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**{k: job[k] for k in ("backend", "precision", "device", "batch")}, "error": f"timed out ({timeout} s)"}
    rows = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**{k: job[k] for k in ("backend", "precision", "device", "batch")},
                "error": f"exit {done.returncode}: {' / '.join(tail)}"}
    return {**rows[-1], "process_s": time.perf_counter() - tick}


def machine_info(device: str) -> dict:
    """What ran the benchmark, for the JSON and the chart title (reads versions without importing)."""
    from importlib import metadata

    info = {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "cpu": cpu_model()}
    for dist in ("tr0n-rt", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if device.startswith("cuda"):
        try:
            info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=False,
                                         capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["gpu"] = None
    info["name"] = info.get("gpu") or f"{info['cpu']} ({info['cpus']} CPUs)"
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def label(row: dict) -> str:
    return row["backend"] + ("" if row["backend"] == "torch" else f" {row['precision']}")


def table(result: dict) -> str:
    lines = [("| backend | batch | ms / batch [min-max] | images/s | step ms | encode | translate | langevin | "
              "final E | decode | import s | load s | first image s | peak RSS MiB | plan |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {label(r)} | {r['batch']} | error: {r['error']} |||||||||||")
            continue
        s = r["stages_ms"]
        step = "-" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
        lines.append(f"| {label(r)} | {r['batch']} | {r['batch_ms']:.1f} [{r['batch_ms_min']:.1f}-{r['batch_ms_max']:.1f}]"
                     f" | {r['images_per_s']:.2f} | {step} | " + " | ".join(f"{s[k]:.1f}" for k in STAGES) +
                     f" | {r['import_s']:.2f} | {r['load_s']:.2f} | {r['first_image_s']:.2f} | {r['peak_rss_mib']:.0f}"
                     f" | {plan_text(r.get('plan'))} |")
    return "\n".join(lines)


def plan_text(plan: dict | None) -> str:
    """A row's memory plan in a few words: "step", "chunks of 8, sub-batch 4, predicted 2.1 GiB"."""
    if not plan:
        return "-"
    words = ["step" if plan["chunk"] is None else f"chunks of {plan['chunk']}"]
    if plan.get("sub_batches", 1) > 1:
        words.append(f"sub-batch {plan['batch']}")
    if plan.get("predicted_peak_gib") is not None:
        words.append(f"predicted {plan['predicted_peak_gib']:.2f} GiB")
    return ", ".join(words)


def chart(result: dict):
    """A bench result -> one PNG-ready image: images/s and Langevin step ms per batch and backend."""
    rows = [r for r in result["rows"] if "error" not in r]
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(label(r) for r in rows))

    def series(key):
        return {n: [next((r[key] for r in rows if label(r) == n and r["batch"] == b), None) for b in batches]
                for n in names}
    groups = [f"batch {b}" for b in batches]
    s = result["settings"]
    title = f"{result['pipeline_name']}, T={s['steps']}, A={s['copies']} on {result['machine']['name']}"
    return stack([bar_panel("images per second (higher is better)", "images/s", groups, series("images_per_s")),
                  bar_panel("Langevin step, ms (lower is better)", "ms", groups, series("step_ms"))], title)




# --- the command ----------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from .atomic import write_bytes, write_json
    from .images import png_bytes
    from .output_checks import check_output_files
    from .outputs import Interrupted

    folder = pipeline_folder(args).resolve()
    check_output_files({"--json": args.json, "--png": args.png}, pipeline=folder)  # before minutes of runs
    configs = parse_configs(args.backends) if args.backends else available_configs(folder, args.device)
    if not configs:
        raise Tr0nError(f"nothing to run in {folder}: it needs pipeline.json with torch installed, or an exported "
                        "bundle (manifest.json) with onnxruntime installed (`pip install 'tr0n-rt[cpu]'`)")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cache = tempfile.TemporaryDirectory(prefix="tr0n-rt-bench-") if args.cold else None
    tick = time.perf_counter()
    rows = []
    for backend, precision in configs:
        for batch in args.batch:
            job = {"folder": str(folder), "backend": backend, "precision": precision, "device": args.device,
                   "batch": batch, "steps": args.steps, "copies": args.copies, "warmup": args.warmup,
                   "repeats": args.repeats, "threads": args.threads, "memory_budget": args.memory_budget,
                   "chunk": args.chunk}
            if cache is not None:  # an empty onnxruntime cache per configuration: the true first run
                env["TR0N_RT_CACHE"] = tempfile.mkdtemp(dir=cache.name)
            row = run_config(job, args.timeout, env)
            rows.append(row)
            msg = row.get("error") or f"{row['images_per_s']:.2f} images/s, {row['batch_ms']:.1f} ms / batch"
            print(f"{label(row):18s} batch {batch:3d}: {msg}", flush=True)
    if cache is not None:
        cache.cleanup()
    name = read_json(folder / ("pipeline.json" if (folder / "pipeline.json").is_file() else "manifest.json")
                     ).get("name", folder.name)
    ok = [r for r in rows if "error" not in r]
    result = {"pipeline": str(folder), "pipeline_name": name, "machine": machine_info(args.device),
              "settings": {"steps": ok[0]["steps"] if ok else args.steps,
                           "copies": ok[0]["copies"] if ok else args.copies, "warmup": args.warmup,
                           "repeats": args.repeats, "device": args.device, "threads": args.threads,
                           "cold_cache": args.cold},
              "rows": rows, "seconds": time.perf_counter() - tick}
    print(f"\n{name} on {result['machine']['name']}: T={result['settings']['steps']}, "
          f"A={result['settings']['copies']}, medians of {args.repeats} after {args.warmup} warm-up; "
          "stages in ms per batch\n")
    print(table(result))
    write_json(args.json, result)
    try:
        if args.png and ok:
            write_bytes(args.png, png_bytes(chart(result)))
    except KeyboardInterrupt:
        raise Interrupted(f"{args.json} was written, the chart {args.png} was not") from None
    print(f"\njson: {args.json}" + (f"  chart: {args.png}" if args.png and ok else ""))
    return 0 if ok else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="quick benchmark: latency, images/s, stages, cold start, peak memory per backend",
        description="Time the whole sampler per backend and batch size, each configuration in a fresh process: "
                    "cold start (import, load, first image), then medians of repeated encode + sample calls "
                    "with per-stage times, images per second and peak memory. Writes JSON (and a PNG chart).")
    g = p.add_argument_group("pipeline")
    g.add_argument("--world", default=None, help="embedded world to use (default: shapes)")
    g.add_argument("--pipeline", type=Path, default=None, help="pipeline or bundle folder instead of a world")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    g.add_argument("--backends", nargs="+", default=None,
                   help="configurations, e.g. torch onnxruntime:fp32 onnxruntime:fp16 tensorrt:fp16 "
                        "(default: every installed engine the folder can run)")
    g = p.add_argument_group("workload")
    g.add_argument("--batch", type=whole_number(1, MAX_BATCH), nargs="+", default=[1, 8],
                   help=f"batch sizes, 1 to {MAX_BATCH} (default: 1 8)")
    g.add_argument("--steps", type=whole_number(0, MAX_STEPS), default=5, help=f"Langevin steps T, 0 to {MAX_STEPS} (default: 5)")
    g.add_argument("--copies", type=whole_number(0, MAX_COPIES), default=None,
                   help=f"augmented copies A, 0 to {MAX_COPIES} (default: the pipeline's)")
    g.add_argument("--warmup", type=whole_number(0, MAX_REPEATS), default=1,
                   help=f"untimed calls after the first image, 0 to {MAX_REPEATS} (default: 1)")
    g.add_argument("--repeats", type=whole_number(1, MAX_REPEATS), default=3,
                   help=f"timed calls, 1 to {MAX_REPEATS}; medians are reported (default: 3)")
    g.add_argument("--threads", type=whole_number(1, MAX_THREADS), default=None,
                   help="threads of each process: OMP_NUM_THREADS, torch's and onnxruntime's intra-op threads")
    g.add_argument("--cold", action="store_true", help="empty onnxruntime graph cache for every configuration")
    add_memory_args(g)  # the table reports the plan beside the peak
    g.add_argument("--timeout", type=seconds(MAX_TIMEOUT_S), default=600.0,
                   help="seconds per configuration, > 0 (default: 600)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, default=Path("out/bench.json"), help="results file (default: out/bench.json)")
    g.add_argument("--png", type=Path, default=None, help="also draw a chart of images/s and step time here")
    p.set_defaults(func=cmd_bench)
    return p
