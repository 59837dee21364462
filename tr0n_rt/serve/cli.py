"""`tr0n-rt serve PIPELINE_OR_BUNDLE`: the HTTP service on Ray Serve (needs the `serve` extra).

    tr0n-rt serve shapes                                   # one box: a local Ray, one replica, 127.0.0.1:8000
    tr0n-rt serve /models/sg2-clip --device cuda --replicas 4 --address auto --host 0.0.0.0   # a cluster

Ray is imported only when the command runs, so `tr0n-rt --help` works without it.
"""
from __future__ import annotations

import signal
import threading

from ..cli_args import MAX_BATCH, MAX_THREADS, memory_size, positive_float, whole_number
from ..errors import ConfigError
from .protocol import Limits

APP = "tr0n"
MAX_REPLICAS = 1024
_GATES: dict = {}  # application -> its Gate actor (app.Gate), held here so that it lives


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a pipeline over HTTP on Ray Serve, batching requests (extra: serve)",
                       description="An HTTP JSON API (README, \"Serving\") over Ray Serve replicas that each run one "
                                   "engine and batch rows across requests. Stops gracefully on Ctrl-C or SIGTERM.")
    p.add_argument("pipeline", help="an embedded world's name (shapes, digits), a bundle or a pipeline folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                       "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=whole_number(1, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--address", default=None, help="Ray cluster to join: auto (the one `ray start` made here), or "
                                                   "HOST:PORT (default: start a local Ray instance)")
    p.add_argument("--replicas", type=whole_number(1, MAX_REPLICAS), default=1,
                   help="engine replicas (default: 1; on a GPU cluster one per GPU)")
    p.add_argument("--cpus-per-replica", type=positive_float, default=1.0,
                   help="CPUs Ray reserves per replica; fractions allowed (default: 1)")
    p.add_argument("--gpus-per-replica", type=positive_float, default=None,
                   help="GPUs Ray reserves per replica (default: 1 with --device cuda, else 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=whole_number(1, MAX_THREADS), default=None,
                   help="onnxruntime CPU threads per replica (default: one per core)")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch", type=whole_number(1, MAX_BATCH), default=32,
                   help="rows (images) per engine call, across requests: the largest engine profile built "
                        "(default: 32)")
    b.add_argument("--batch-wait-ms", type=whole_number(0, 10_000), default=10,
                   help="how long a waiting row waits for others to join its batch (default: 10)")
    b.add_argument("--no-batching", action="store_true", help="run each request's images as a batch of their own")
    d = Limits()
    lim = p.add_argument_group("limits (each request; refused with 4xx before any work)")
    lim.add_argument("--max-body", type=memory_size, default=d.max_body_bytes, metavar="SIZE",
                     help=f"largest request body (default: {d.max_body_bytes >> 20}M)")
    lim.add_argument("--max-conditions", type=whole_number(1, 4096), default=d.max_conditions)
    lim.add_argument("--max-samples", type=whole_number(1, 4096), default=d.max_samples)
    lim.add_argument("--max-images", type=whole_number(1, 100_000), default=d.max_images)
    lim.add_argument("--max-prompt-chars", type=whole_number(1, 100_000), default=d.max_prompt_chars)
    lim.add_argument("--max-steps", type=whole_number(0, 10_000), default=d.max_steps)
    lim.add_argument("--timeout", type=positive_float, default=d.timeout_s,
                     help=f"seconds a request may take, queueing included: past it, 504 (default: {d.timeout_s:g})")
    p.add_argument("--no-judge", action="store_true", help="do not judge images (worlds' judges only)")
    p.set_defaults(func=cmd_serve)


def resolve_pipeline(text: str) -> str:
    """A world name, or a folder as an absolute path (Ray's workers run in other working directories)."""
    from ..backends import check_pipeline_dir
    from ..paths import is_world_name, pipeline_path

    folder = check_pipeline_dir(pipeline_path(text).expanduser().resolve(), f"pipeline {text}")
    return text if is_world_name(text) else str(folder)


def options_from_args(args):
    from .app import ServeOptions

    limits = Limits(max_body_bytes=args.max_body, max_conditions=args.max_conditions, max_samples=args.max_samples,
                    max_images=args.max_images, max_prompt_chars=args.max_prompt_chars, max_steps=args.max_steps,
                    timeout_s=args.timeout)
    return ServeOptions(resolve_pipeline(args.pipeline), args.backend, args.device, args.precision, args.threads,
                        not args.no_batching, args.max_batch, args.batch_wait_ms / 1000, limits,
                        judge=not args.no_judge)


def start(options, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, cpus: float = 1.0,
          gpus: float | None = None, address: str | None = None, after_init=None, **ray_init) -> None:
    """Joins (address) or starts a Ray instance, starts Serve's HTTP proxy on host:port and deploys the
    replicas; returns once every replica has loaded and warmed its engine. after_init(): called once Ray
    runs, before anything serves (the command installs its signal handlers there)."""
    from dataclasses import replace

    import ray
    from ray import serve

    from .app import GATE_NAMESPACE, Gate

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, **ray_init)
    if after_init is not None:
        after_init()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": options.limits.timeout_s + 30})
    gate = ray.remote(num_cpus=0)(Gate).options(name=f"{APP}-gate", namespace=GATE_NAMESPACE).remote()
    _GATES[APP] = gate  # a named actor lives while its creator holds a handle
    deploy(replace(options, gate=f"{APP}-gate"), replicas, cpus, gpus)


def deploy(options, replicas: int = 1, cpus: float = 1.0, gpus: float | None = None, name: str = APP,
           route_prefix: str = "/") -> None:
    """One more application on the running Serve instance (another pipeline or other settings under
    route_prefix, e.g. /digits/v1/generate); returns once its replicas are warm."""
    from ray import serve

    from .app import deployment

    serve.run(deployment(options, replicas, cpus, gpus, name), name=name, route_prefix=route_prefix)


def stop(drain_s: float = 0.0) -> None:
    """Graceful: the application's gate closes, so its replicas turn new requests away (503, which clients
    retry) and finish the ones they hold, answered through the proxy (waited for up to drain_s seconds);
    then Serve and Ray stop."""
    import time

    import ray
    from ray import serve

    from .app import GATE_POLL_S

    gate = _GATES.pop(APP, None)  # None: not started by start()
    if gate is not None:
        ray.get(gate.close.remote())
        time.sleep(3 * GATE_POLL_S)  # every replica reads the closed gate at least once
        deadline = time.monotonic() + drain_s
        while not ray.get(gate.drained.remote()) and time.monotonic() < deadline:
            time.sleep(GATE_POLL_S)
        ray.kill(gate)
    serve.shutdown()
    ray.shutdown()


def cmd_serve(args) -> int:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ConfigError("tr0n-rt serve needs Ray Serve: pip install 'tr0n-rt[serve]' (with [cpu] or [gpu])") from None
    options = options_from_args(args)  # refuses a bad pipeline before Ray starts
    stopping = threading.Event()

    def handle_signals():  # after ray.init, whose own SIGTERM handler aborts the process; before serving
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())

    start(options, args.host, args.port, args.replicas, args.cpus_per_replica, args.gpus_per_replica, args.address,
          handle_signals)
    print(f"serving {options.pipeline} at http://{args.host}:{args.port}/v1/generate with {args.replicas} "
          "replica(s); Ctrl-C or SIGTERM stops", flush=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        print("stopping: finishing the requests in flight", flush=True)
        stop(drain_s=options.limits.timeout_s + 5)
    print("stopped", flush=True)
    return 0
