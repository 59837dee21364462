"""`tr0n-rt serve` on Ray Serve: one deployment whose replicas each hold one Worker (one engine).

Cross-request batching: a request becomes rows (one per image), and every row goes through the replica's
`@serve.batch` queue, which hands the engine up to `max_batch` rows from whatever requests are waiting
(after at most `batch_wait_s`). With batching off, each request's rows run as one batch of their own, as
`tr0n-rt sample` runs them. Engine calls run on one thread per replica, off the event loop, so a replica
keeps accepting (and queueing) requests while a batch runs.

Ray Serve's own traps, handled here: `max_ongoing_requests` (default 5) caps the requests a replica holds
and so the rows a batch can gather: it is set to 2 x max_batch; `max_queued_requests` bounds the waiting
room (503 past it); replicas ask for `cpus` CPUs each (fractional on a small CPU box, or they starve
Ray's own tasks) and one GPU each on a GPU cluster.
"""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .protocol import (
    GENERATE,
    HEALTH,
    INFO,
    READY,
    Limits,
    RequestError,
    body_too_large,
    info_body,
)


@dataclass(frozen=True)
class ServeOptions:
    """Everything a replica needs to open its engine and shape its batches (passed to every replica)."""

    pipeline: str
    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    batching: bool = True
    max_batch: int = 32  # rows per engine call: the largest engine profile, or what the memory plan allows
    batch_wait_s: float = 0.01  # how long the first waiting row waits for others
    limits: Limits = field(default_factory=Limits)
    judge: bool = True
    gate: str | None = None  # the name of the application's Gate actor (cli.start), for graceful shutdown


GATE_NAMESPACE = "tr0n-rt"
GATE_POLL_S = 0.2


class Tr0nServer:
    """The deployment's replica (wrapped by `deployment()`): HTTP in, rows to the engine, JSON out."""

    def __init__(self, options: dict):
        from .worker import Worker

        self.options = ServeOptions(**{**options, "limits": Limits(**options["limits"])})
        o = self.options
        self.worker = Worker(o.pipeline, o.backend, o.device, o.precision, o.threads, o.limits, o.judge)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tr0n-engine")  # the engine is single-threaded
        self._rows.set_max_batch_size(o.max_batch)
        self._rows.set_batch_wait_timeout_s(o.batch_wait_s)
        self.worker.warm_up()
        self.ready, self.draining, self.inflight, self._watcher = True, False, 0, None
        self.pid = os.getpid()

    async def __call__(self, request: Request) -> JSONResponse:
        if self._watcher is None and self.options.gate:  # the first call reads the gate before going on
            import ray

            gate = ray.get_actor(self.options.gate, namespace=GATE_NAMESPACE)
            self.draining = await gate.report.remote(self.pid, self.inflight)
            self._watcher = asyncio.create_task(self._watch_gate(gate))
        path, root = request.scope["path"], request.scope.get("root_path", "")
        path, method = (path[len(root):] if root and path.startswith(root) else path).rstrip("/") or "/", request.method
        routes = {GENERATE: "POST", INFO: "GET", HEALTH: "GET", READY: "GET"}
        if path not in routes:
            return _error(RequestError(404, "not_found", f"no route {path[:100]}; routes: {', '.join(routes)}"))
        if method != routes[path]:
            return _error(RequestError(405, "method_not_allowed", f"{path} takes {routes[path]}, not {method}"))
        if path == HEALTH:
            return JSONResponse({"status": "ok", "pid": self.pid})
        if path == READY:
            ready = self.ready and not self.draining
            return JSONResponse({"ready": ready, "pipeline": self.worker.info.name, "pid": self.pid},
                                status_code=200 if ready else 503)
        if path == INFO:
            o = self.options
            return JSONResponse(info_body(self.worker.info, o.limits, o.max_batch, o.batching,
                                          self.worker.sampler.config))
        if self.draining:
            return _error(RequestError(503, "shutting_down", "this server is shutting down: retry (another replica "
                                                             "or server will answer)"))
        self.inflight += 1
        try:
            return JSONResponse(await asyncio.wait_for(self._generate(request), self.options.limits.timeout_s))
        except RequestError as e:
            return _error(e)
        except asyncio.TimeoutError:
            return _error(RequestError(504, "timeout", f"the request took longer than {self.options.limits.timeout_s:g} s "
                                                       "(the server is busy): retry later, or ask for fewer images"))
        finally:
            self.inflight -= 1

    async def _watch_gate(self, gate) -> None:
        """Reads the application's Gate (cli.start made it) every GATE_POLL_S: once it is closed, new
        generate requests get 503 (clients retry) and this replica reports how many it still holds."""
        while True:
            await asyncio.sleep(GATE_POLL_S)
            self.draining = await gate.report.remote(self.pid, self.inflight)

    async def _generate(self, request: Request) -> dict:
        body = await _read_body(request, self.options.limits)
        job = self.worker.parse(body)
        rows = job.rows()
        tick = time.perf_counter()
        if self.options.batching:
            results = await asyncio.gather(*(self._rows(r) for r in rows))
        else:
            results = await self._run(rows)
        return {"pipeline": self.worker.info.name, "conditioning": job.key, "translator": job.translator,
                "server_seconds": round(time.perf_counter() - tick, 4), "replica": self.pid,
                "images": job.records(results)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _rows(self, rows: list) -> list:
        return await self._run(rows)

    async def _run(self, rows: list) -> list:
        from .worker import server_error

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.worker.run, rows)
        except Exception as e:  # the whole batch failed: every request in it gets a 500 it may retry
            raise server_error(e) from e

    def check_health(self) -> None:
        """Ray Serve's health check: the engine thread must be alive (a dead replica is replaced)."""
        if self.executor._shutdown:
            raise RuntimeError("the engine thread has stopped")


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused (413) as soon as it is longer than the limit, before it is all read."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(415, "unsupported_media_type", f"send the body as application/json, not {ctype[:60]}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        raise body_too_large(limits)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise body_too_large(limits)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client_disconnected", "the client closed the connection mid-body") from None
    return b"".join(chunks)


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def deployment(options: ServeOptions, replicas: int = 1, cpus: float = 1.0, gpus: float | None = None,
               name: str = "tr0n"):
    """The bound Ray Serve application: `replicas` copies of Tr0nServer(options), each reserving `cpus`
    CPUs and `gpus` GPUs (None: one on a CUDA device, none on the CPU)."""
    if gpus is None:
        gpus = 1.0 if options.device.startswith("cuda") else 0.0
    init = {**asdict(options), "limits": options.limits.as_dict()}
    d = serve.deployment(
        Tr0nServer, name=name, num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
        max_ongoing_requests=2 * options.max_batch,  # >= max_batch, or batches never fill
        max_queued_requests=16 * options.max_batch,  # past it: 503, which the client retries
        health_check_period_s=5.0, health_check_timeout_s=30.0,
        graceful_shutdown_wait_loop_s=1.0,  # a stopping replica finishes what it holds ...
        graceful_shutdown_timeout_s=options.limits.timeout_s + 5.0)  # ... within a request's timeout
    return d.bind(init)


class Gate:
    """A Ray actor that every replica of one application reads (Tr0nServer._watch_gate): open while the
    application serves, closed when `tr0n-rt serve` stops; it collects what each replica still holds."""

    def __init__(self):
        self.closed, self.held = False, {}  # replica -> (requests held, when reported, gate closed then)

    def close(self) -> None:
        self.closed = True

    def report(self, replica: int, inflight: int) -> bool:
        self.held[replica] = (inflight, time.monotonic(), self.closed)
        return self.closed

    def drained(self) -> bool:
        """Closed, and every live replica (one that reported within the last 5 polls; a dead one stops
        reporting) has seen it closed and holds no request."""
        now = time.monotonic()
        return self.closed and all(n == 0 and seen for n, t, seen in self.held.values() if now - t < 5 * GATE_POLL_S)


def build_app(args: dict):
    """Ray Serve's application builder, for `serve run` and KubeRay's RayService (their args are strings):

        serve run tr0n_rt.serve.app:build_app pipeline=/models/bundle device=cuda replicas=2
        # RayService: applications: [{import_path: tr0n_rt.serve.app:build_app, args: {pipeline: ...}}]

    Keys: ServeOptions' fields (pipeline is required; limits as max_body_bytes, timeout_s, ...), replicas,
    cpus, gpus. Unknown keys are refused."""
    from dataclasses import fields

    from ..errors import ConfigError

    def value(name: str, text, kind: str):
        text = str(text)
        if kind in ("bool", "bool | None"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"{name}={text[:40]}: give true or false")
            return text.lower() in ("true", "1")
        try:
            return int(text) if kind.startswith("int") else float(text) if kind.startswith("float") else text
        except ValueError:
            raise ConfigError(f"{name}={text[:40]} is not a number") from None

    own = {f.name: str(f.type) for f in fields(ServeOptions) if f.name != "limits"}
    limit = {f.name: str(f.type) for f in fields(Limits)}
    place = {"replicas": "int", "cpus": "float", "gpus": "float"}
    unknown = sorted(set(args) - set(own) - set(limit) - set(place))
    if unknown or "pipeline" not in args:
        raise ConfigError(f"build_app: unknown key(s) {', '.join(unknown) or '-'}; pipeline is required; known: "
                          f"{', '.join(sorted({**own, **limit, **place}))}")
    options = ServeOptions(**{k: value(k, v, own[k]) for k, v in args.items() if k in own},
                           limits=Limits(**{k: value(k, v, limit[k]) for k, v in args.items() if k in limit}))
    p = {k: value(k, v, place[k]) for k, v in args.items() if k in place}
    return deployment(options, p.get("replicas", 1), p.get("cpus", 1.0), p.get("gpus"))
