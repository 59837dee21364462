"""Load on `tr0n-rt serve`: images/s and latency (p50, p99) at concurrency 1, 8 and 32, with cross-request
batching on and off, against sequential direct `generate` calls in this process, one machine.

    python benchmarks/serve_load.py --world shapes --out benchmarks/serve-load-shapes.json

A local Ray instance, one replica (ONNX Runtime fp32 on the CPU, --threads per replica), the world's
default settings, one image per request (prompt i of the world's prompt file, seed i). Per level:
--warmup requests, then --repeats runs of --requests requests from `concurrency` client threads; the
figures are the median run's (by images/s), latencies pooled over all runs. In-process: the same requests
one after the other through the replica's own work in this process (serve.worker.Worker: sample, judge,
PNG; no HTTP, no Ray), batch 1, concurrency 1.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import platform
import socket
import statistics
import time

import numpy as np

from tr0n_rt.atomic import write_json
from tr0n_rt.bench import cpu_model


def prompts_of(world: str) -> list[str]:
    from tr0n_rt.paths import world_dir

    text = (world_dir(world) / "prompts.txt").read_text().splitlines()
    return [p.strip() for p in text if p.strip() and not p.startswith("#")]


def one_level(call, jobs: list, concurrency: int) -> tuple[float, list[float]]:
    """(seconds for all jobs, per-request latencies) with `concurrency` client threads."""
    latencies = []

    def timed(job):
        tick = time.perf_counter()
        call(job)
        latencies.append(time.perf_counter() - tick)

    tick = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, jobs))
    return time.perf_counter() - tick, latencies


def measure(name: str, call, queries: list, concurrency: int, requests: int, repeats: int, warmup: int) -> dict:
    jobs = [(queries[i % len(queries)], i) for i in range(requests)]
    one_level(call, jobs[:warmup], min(concurrency, warmup))
    runs, pooled = [], []
    for _ in range(repeats):
        seconds, lat = one_level(call, jobs, concurrency)
        runs.append(requests / seconds)
        pooled += lat
    ms = np.array(pooled) * 1000
    row = {"mode": name, "concurrency": concurrency, "requests": requests, "repeats": repeats,
           "images_per_s": round(statistics.median(runs), 2), "images_per_s_runs": [round(r, 2) for r in runs],
           "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    print(f"{name:>12} c={concurrency:<3} {row['images_per_s']:7.2f} images/s  p50 {row['p50_ms']:8.1f} ms  "
          f"p99 {row['p99_ms']:8.1f} ms", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="shapes")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the replica and of direct calls")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per run (at least the concurrency)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import ray
    from ray import serve

    from tr0n_rt.serve.app import ServeOptions
    from tr0n_rt.serve.cli import deploy, start, stop
    from tr0n_rt.serve.client import Client

    queries = prompts_of(args.world)
    key = "classes" if args.world == "digits" else "prompts"
    rows = []
    from tr0n_rt.serve.worker import Worker

    worker = Worker(args.world, threads=args.threads)

    def in_process(j):
        return worker.run(worker.parse(json.dumps({key: [j[0]], "seed": j[1]}).encode()).rows())

    rows.append(measure("in-process", in_process, queries, 1, args.requests, args.repeats, args.warmup))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    try:
        for batching in (True, False):
            opts = ServeOptions(args.world, threads=args.threads, batching=batching, max_batch=args.max_batch)
            if batching:
                start(opts, port=port, cpus=1.0)
            else:
                serve.delete("tr0n")
                deploy(opts, cpus=1.0)
            client = Client(f"http://127.0.0.1:{port}", timeout=600)
            client.wait_ready(120)
            name = "batching" if batching else "no batching"
            for c in args.concurrency:
                rows.append(measure(name, lambda j, client=client: client.generate(**{key: [j[0]]}, seed=j[1], png=True), queries, c,
                                    max(args.requests, c), args.repeats, args.warmup))
    finally:
        stop()
    out = {"world": args.world, "machine": f"{cpu_model()} ({platform.machine()}), 2 cores shared, no GPU",
           "backend": "onnxruntime fp32 CPU", "threads": args.threads, "replicas": 1,
           "max_batch": args.max_batch, "ray": ray.__version__, "rows": rows}
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
