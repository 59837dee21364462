"""The TensorRT backend: a bundle's engines (built by `tr0n-rt build`, export/engines.py), with the
Langevin step replayed from CUDA graphs. Imports no torch and no TensorRT at module level.

Life cycle: open (manifest and checksums; every engine's stamp checked against this GPU and TensorRT
before anything is deserialised) -> load (each engine deserialised once; one execution context per
profile and graph slot, all sharing ONE device-memory block sized to the largest engine) -> run.

Engines have static-batch profiles (min = opt = max). A batch between two built sizes is padded up to
the next one; the padding rows are computed and dropped (every graph is per-sample).

The step (see cuda.py, `StepGraphs`): two CUDA graphs per (batch, copies, components), ping-ponging the
state between two buffer sets, captured after one warm-up enqueue. Translator, energy and generator run
as plain enqueues (once per sample). Where the step has no engine (its build failed, or it was not
built) and torch with CUDA is present, the step runs in torch inside a torch CUDA graph and the other
graphs still run as engines ("torch-hybrid", `choose_step_path`).

FP16 guard: after every FP16 step, its energy and state are checked on the device; a step with a NaN
or inf is recomputed on the float32 path (the step's fp32 engine if built, else ONNX Runtime's fp32
graph) into the same buffers, and `fp16_fallbacks` counts how often.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle, graph_fingerprint, load_bundle
from ..errors import BackendError, BundleError, ConfigError
from .base import STATE_NAMES, Backend
from .cuda import StepGraphs, open_device, pick_batch, put, shape_key
from .onnxruntime import check_io, check_shape

AXES = ("batch", "copies", "components")
STEP_STATE = {n: f"{n}_next" for n in STATE_NAMES}
REBUILD = "rebuild with `tr0n-rt build {bundle}`"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendError("TensorRT is not installed: pip install 'tr0n-rt[gpu]' on a machine with an NVIDIA GPU "
                           f"(on Jetson it comes with JetPack), or use --backend onnxruntime ({e})") from None
    return tensorrt


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


# --- stamps: what an engine was built for, and whether it runs here --------------------------------------


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric tails ('10.8.0.post1') are dropped."""
    parts = []
    for p in str(version).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    if not parts:
        raise ConfigError(f"not a TensorRT version: {version!r}")
    return tuple(parts)


def sm_name(cc) -> str:
    """A compute capability as 'sm_XY': from 'sm_90', '9.0', (9, 0) or 90."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"sm_{int(cc[0])}{int(cc[1])}"
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    if re.fullmatch(r"\d+\.\d", s):
        major, minor = s.split(".")
        return f"sm_{major}{minor}"
    if re.fullmatch(r"\d{2,3}", s):
        return f"sm_{s}"
    raise ConfigError(f"not a compute capability: {cc!r} (expected e.g. 'sm_87', '8.7' or (8, 7))")


def sm_number(cc) -> int:
    """'sm_87' -> 87, 'sm_100' -> 100."""
    return int(sm_name(cc)[3:])


def short_version(version: str) -> str:
    return ".".join(map(str, parse_version(version)[:2]))


def check_engine_compatible(stamp: dict, trt_version: str, gpu_name: str, compute_capability,
                            bundle: str | Path = "BUNDLE") -> None:
    """BackendError unless an engine stamped `stamp` can be deserialised by this TensorRT on this GPU.

    Default engines run only on the compute capability they were built for, with the TensorRT version
    (major.minor.patch) that built them. Hardware-compatible engines (Ampere+) run on any GPU of sm_80
    or newer; version-compatible ones on the same or a newer TensorRT of the same major version."""
    if "failed" in stamp:
        raise BackendError(f"the {stamp.get('precision', '')} engine of this graph failed to build "
                           f"({stamp['failed']}); {REBUILD.format(bundle=bundle)}")
    built_sm, here_sm = sm_name(stamp["compute_capability"]), sm_name(compute_capability)
    built_v, here_v = parse_version(stamp["tensorrt"]), parse_version(trt_version)
    what = f"engine built for {built_sm} with TensorRT {short_version(stamp['tensorrt'])}"
    how = REBUILD.format(bundle=bundle)
    if stamp.get("hardware_compatible"):
        if sm_number(here_sm) < 80:
            raise BackendError(f"{what} (hardware-compatible, Ampere or newer); this GPU ({gpu_name}) is {here_sm}: "
                               f"{how}")
    elif built_sm != here_sm:
        raise BackendError(f"{what}; this GPU ({gpu_name}) is {here_sm}: {how}")
    if stamp.get("version_compatible"):
        if here_v[0] != built_v[0] or here_v[:3] < built_v[:3]:
            raise BackendError(f"{what} (version-compatible within TensorRT {built_v[0]}.x, from "
                               f"{'.'.join(map(str, built_v[:3]))}); this is TensorRT {trt_version}: {how}")
    elif here_v[:3] != built_v[:3]:
        raise BackendError(f"{what}; this is TensorRT {short_version(trt_version)} ({trt_version}): {how}")


def check_engine_source(bundle: Bundle, graph: str, stamp: dict) -> None:
    """BackendError if the engine was built from another version of the graph than the bundle's own."""
    source = stamp.get("source", {})
    files = bundle.manifest["graphs"][graph]["files"]
    current = graph_fingerprint(bundle.manifest, source.get("file", ""))
    if source.get("file") not in files.values() or current != source.get("sha256"):
        raise BackendError(f"the {graph} engine was built from a different {source.get('file', 'graph')} than the "
                           f"bundle now holds (re-exported since?); {REBUILD.format(bundle=bundle.folder)}")


def concrete_shape(dims: list, sizes: dict) -> list[int]:
    """Manifest dims (ints, or axis names) with the axes replaced by sizes[name]."""
    out = []
    for d in dims:
        if isinstance(d, str):
            if d not in sizes:
                raise BundleError(f"dynamic axis {d!r} has no size (known: {', '.join(sizes) or '-'}); "
                                  f"the engines know the axes {', '.join(AXES)}")
            out.append(int(sizes[d]))
        else:
            out.append(int(d))
    return out


def select_profile(stamp: dict, batch: int, copies: int | None = None, components: int | None = None,
                   bundle: str | Path = "BUNDLE") -> tuple[int, dict]:
    """(profile index, profile) for a call: the profile whose copies and components are the call's and
    whose batch is the smallest >= batch (the call is padded up to it)."""
    want = {"copies": copies, "components": components}
    fits = [(i, p) for i, p in enumerate(stamp["profiles"])
            if all(p.get(a) is None or want[a] is None or p[a] == want[a] for a in want)]
    if not fits:
        built = sorted({tuple((a, p.get(a)) for a in want if p.get(a) is not None) for p in stamp["profiles"]})
        asked = ", ".join(f"{a}={v}" for a, v in want.items() if v is not None)
        raise BackendError(f"no engine profile for {asked} (built: {built}); rebuild with "
                           f"`tr0n-rt build {bundle} --copies A --components K` for the sampling you use")
    b = pick_batch(batch, {p["batch"] for _, p in fits})
    return next((i, p) for i, p in fits if p["batch"] == b)


# --- which engine runs the step ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPath:
    kind: str  # "tensorrt" | "torch-hybrid" | "torch" | "onnxruntime"
    reason: str


def choose_step_path(bundle: Bundle, trt_available: bool, engines: dict | None, torch_cuda: bool = False,
                     precision: str = "fp16") -> StepPath:
    """Where the Langevin step runs, given what is installed and built.

    engines: the manifest's `engines` section ({graph: {precision: stamp}}; a stamp with "failed" is a
    build that did not succeed). torch_cuda: torch with CUDA imports and the bundle folder holds the
    torch pipeline (pipeline.json), so a torch step can be captured."""
    has_torch = torch_cuda and (Path(bundle.folder) / "pipeline.json").is_file()
    torch_note = "torch with CUDA and the bundle's pipeline.json" if not has_torch else ""

    def stamp(graph):
        s = (engines or {}).get(graph, {}).get(precision)
        return s if s and "failed" not in s else None

    forward = [g for g in bundle.manifest["graphs"] if g != "step"]
    missing = [g for g in forward if stamp(g) is None]
    if not trt_available:
        if has_torch:
            return StepPath("torch", "TensorRT is not installed: the whole pipeline runs in torch, the step captured "
                                     "in a CUDA graph")
        return StepPath("onnxruntime", "TensorRT is not installed and the captured torch step needs " + torch_note)
    if stamp("step") is not None and not missing:
        return StepPath("tensorrt", f"every graph has a {precision} engine")
    step_state = (engines or {}).get("step", {}).get(precision, {})
    why = f"the step engine failed to build ({step_state['failed']})" if "failed" in step_state else \
        f"the step has no {precision} engine" if stamp("step") is None else \
        f"graph(s) {', '.join(missing)} have no {precision} engine"
    if stamp("step") is None and not missing and has_torch:
        return StepPath("torch-hybrid", f"{why}: engines run the forward graphs, torch runs the step in a CUDA graph")
    if has_torch:
        return StepPath("torch", f"{why}: the whole pipeline runs in torch")
    return StepPath("onnxruntime", f"{why}, and the torch fallback needs {torch_note}: build the engines with "
                                   f"`tr0n-rt build {bundle.folder}` or use --backend onnxruntime")


# --- one engine ---------------------------------------------------------------------------------------------


def engine_io(trt, engine) -> tuple[dict, dict]:
    """name -> (dtype, shape) of an engine's inputs and outputs; dynamic dims (-1) are None."""
    io = ({}, {})
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        shape = [d if d >= 0 else None for d in engine.get_tensor_shape(name)]
        io[0 if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else 1][name] = (dtype, shape)
    return io


class Engine:
    """A deserialised engine and its execution contexts, one per (profile, slot), none owning memory."""

    def __init__(self, trt, runtime, bundle: Bundle, graph: str, stamp: dict):
        self.trt, self.graph, self.stamp = trt, graph, stamp
        path = bundle.folder / stamp["file"]
        plan = bundle.read_verified(stamp["file"])  # listed in the manifest, and checked as read
        if stamp.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # version-compatible plans carry their lean runtime
        try:
            self.engine = runtime.deserialize_cuda_engine(plan)
        except Exception:  # some versions raise instead of returning None
            self.engine = None
        if self.engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialise {path}; "
                               f"{REBUILD.format(bundle=bundle.folder)}")
        self.inputs, self.outputs = engine_io(trt, self.engine)
        check_io(bundle, graph, path, self.inputs, self.outputs)
        self.contexts: dict = {}
        self.memory = None  # (pointer, size) of the shared block, set by the backend

    @property
    def memory_size(self) -> int:
        e = self.engine
        return int(e.device_memory_size_v2 if hasattr(e, "device_memory_size_v2") else e.device_memory_size)

    def context(self, profile: int, slot: int, stream: int):
        key = (profile, slot)
        if key not in self.contexts:
            trt, ptr, size = self.trt, *self.memory
            if hasattr(trt, "ExecutionContextAllocationStrategy"):
                ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            else:
                ctx = self.engine.create_execution_context_without_device_memory()
            if hasattr(ctx, "set_device_memory"):
                ctx.set_device_memory(ptr, size)
            else:
                ctx.device_memory = ptr
            if not ctx.set_optimization_profile_async(profile, stream):
                raise BackendError(f"{self.graph} engine: cannot select optimisation profile {profile}")
            self.contexts[key] = ctx
        return self.contexts[key]

    def bind(self, device, profile: int, slot: int, bindings: dict):
        """Sets shapes and addresses of context (profile, slot) to `bindings`; returns enqueue()."""
        ctx = self.context(profile, slot, device.stream_handle())
        for n in self.inputs:
            if not ctx.set_input_shape(n, tuple(bindings[n].shape)):
                raise BackendError(f"{self.graph} engine refuses shape {tuple(bindings[n].shape)} for input {n!r} "
                                   f"in profile {profile}")
        for n in (*self.inputs, *self.outputs):
            if n in self.outputs and tuple(ctx.get_tensor_shape(n)) != tuple(bindings[n].shape):
                raise BackendError(f"{self.graph} engine: output {n!r} has shape {tuple(ctx.get_tensor_shape(n))}, "
                                   f"the buffer {tuple(bindings[n].shape)}")
            ctx.set_tensor_address(n, device.ptr(bindings[n]))

        def enqueue():
            if not ctx.execute_async_v3(device.stream_handle()):
                raise BackendError(f"TensorRT failed to enqueue the {self.graph} engine")
        return enqueue


# --- the backend ------------------------------------------------------------------------------------------


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, engines: dict, device, path: StepPath, precision: str = "fp16",
                 cuda_graphs: bool = True, fp16_guard: bool = True, fp32_step: Engine | None = None,
                 torch_step=None):
        self.bundle, self.info, self.precision = bundle, bundle.info, precision
        self.engines, self.device, self.path = engines, device, path
        self.fp32_step, self.torch_step = fp32_step, torch_step
        everything = list(engines.values()) + ([fp32_step] if fp32_step else [])
        size = max([e.memory_size for e in everything] + [1])
        self.scratch = device.empty((size,), "uint8")  # one block for every context: graphs run one at a time
        for e in everything:
            e.memory = (device.ptr(self.scratch), size)
        self.buffers: dict = {}  # (graph, profile) -> {tensor: buffer}, for the forward graphs
        self.step = None
        if "step" in engines:
            inputs, outputs = bundle.io("step")
            batched = {n for n, s in {**inputs, **outputs}.items() if s["shape"][:1] == ["batch"]}
            guard = fp16_guard and precision == "fp16"
            fixed = tuple(n for n in inputs if n not in STEP_STATE)  # condition, noise, hparams (, aesthetic_weight)
            self.step = StepGraphs(device, STEP_STATE, fixed, ("energy",), batched,
                                   prepare=self._prepare_step, alloc=self._step_specs, use_graphs=cuda_graphs,
                                   check=(lambda out: device.all_finite(list(out.values()))) if guard else None,
                                   fallback=self._fp32_step if guard else None)
        self._ort = None

    @classmethod
    def open(cls, bundle_dir, precision: str = "fp16", device: str = "cuda", cuda_graphs: bool = True,
             fp16_guard: bool = True, device_kind: str = "auto") -> "TrtBackend":
        """Opens a bundle's engines for `precision`; device: "cuda" or "cuda:N"."""
        kind, _, index = device.partition(":")
        if kind != "cuda" or not (index == "" or index.isdigit()):
            raise ConfigError(f"the TensorRT backend runs on CUDA devices; got device {device!r} (use cuda or cuda:N)")
        device_id = int(index or 0)
        trt = import_tensorrt()
        bundle = load_bundle(bundle_dir)
        stamps = bundle.manifest.get("engines") or {}
        if not stamps:
            raise BackendError(f"bundle {bundle.folder} has no TensorRT engines: build them with "
                               f"`tr0n-rt build {bundle.folder}`")
        from .cuda import current_gpu

        gpu = current_gpu(device_id)
        usable = {}
        for graph, by_precision in stamps.items():
            stamp = by_precision.get(precision)
            if stamp is not None and "failed" not in stamp:
                check_engine_compatible(stamp, trt.__version__, *gpu, bundle=bundle.folder)
                check_engine_source(bundle, graph, stamp)
                usable[graph] = stamp
        path = choose_step_path(bundle, True, stamps, torch_cuda=_torch_cuda(), precision=precision)
        if path.kind not in ("tensorrt", "torch-hybrid"):
            advice = {"torch": "open it with --backend torch --device cuda (the step captured in a CUDA graph)",
                      "onnxruntime": "use --backend onnxruntime"}[path.kind]
            raise BackendError(f"the TensorRT backend cannot run bundle {bundle.folder}: {path.reason}; {advice}")
        # The torch step hands torch tensors to the engines: buffers must then be torch's too.
        dev = open_device("torch" if path.kind == "torch-hybrid" else device_kind, device_id)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines = {g: Engine(trt, runtime, bundle, g, s) for g, s in usable.items()}
        fp32 = None
        step32 = stamps.get("step", {}).get("fp32")
        if precision == "fp16" and fp16_guard and path.kind == "tensorrt" and step32 and "failed" not in step32:
            check_engine_compatible(step32, trt.__version__, *gpu, bundle=bundle.folder)
            fp32 = Engine(trt, runtime, bundle, "step", step32)
        torch_step = None
        if path.kind == "torch-hybrid":
            engines.pop("step", None)
            from .torch import TorchBackend

            torch_step = TorchBackend.open(bundle.folder, device=f"cuda:{device_id}", cuda_graphs=cuda_graphs)
        return cls(bundle, engines, dev, path, precision, cuda_graphs, fp16_guard, fp32, torch_step)

    # --- running -------------------------------------------------------------------------------------
    def run(self, graph: str, inputs: dict) -> dict:
        declared, _ = self.bundle.io(graph) if self.bundle.has(graph) else ({}, {})
        missing = [n for n in declared if n not in inputs]
        extra = [n for n in inputs if n not in declared]
        if not declared or missing or extra:
            raise BackendError(f"graph {graph!r} takes inputs {', '.join(declared) or '(no such graph)'}; "
                               f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(extra) or '-'}")
        for n, v in inputs.items():
            check_shape(graph, n, _shape(v), declared[n]["shape"])
        with self.device.scope():
            return self._run(graph, inputs)

    def _run(self, graph: str, inputs: dict) -> dict:
        if graph == "step":
            if self.torch_step is not None:
                return self.torch_step.run("step", inputs)
            b, a, k = shape_key({n: _shape(inputs[n]) for n in ("means", "aug_noise")})
            profile, p = select_profile(self.engines["step"].stamp, b, a, k, self.bundle.folder)
            return self.step.run((p["batch"], a, k), inputs, rows=b)
        return self._run_forward(graph, inputs)

    def _sizes(self, graph: str, inputs: dict) -> dict:
        """The call's size of each dynamic axis, read off the inputs and the manifest's dims."""
        sizes = {}
        for n, spec in self.bundle.io(graph)[0].items():
            for d, s in zip(spec["shape"], _shape(inputs[n])):
                if isinstance(d, str):
                    sizes[d] = int(s)
        return sizes

    def _run_forward(self, graph: str, inputs: dict) -> dict:
        engine = self.engines.get(graph)
        if engine is None:
            raise BackendError(f"bundle {self.bundle.folder} has no {self.precision} engine for graph {graph!r}; "
                               f"{REBUILD.format(bundle=self.bundle.folder)}")
        sizes = self._sizes(graph, inputs)
        rows = sizes.get("batch", 1)
        index, profile = select_profile(engine.stamp, rows, sizes.get("copies"), sizes.get("components"),
                                        self.bundle.folder)
        key = (graph, index)
        ins, outs = self.bundle.io(graph)
        padded = {**sizes, **{a: profile[a] for a in AXES if profile.get(a) is not None}}
        if key not in self.buffers:
            self.buffers[key] = {n: self.device.empty(concrete_shape(s["shape"], padded), s["dtype"])
                                 for n, s in {**ins, **outs}.items()}
        bufs = self.buffers[key]
        real = {n: self.device.rows(b, rows) if {**ins, **outs}[n]["shape"][:1] == ["batch"] else b
                for n, b in bufs.items()}
        for n in ins:
            put(self.device, real[n], inputs[n])
        engine.bind(self.device, index, 0, bufs)()
        return {n: self.device.clone(real[n]) for n in outs}

    # --- the step's graphs ---------------------------------------------------------------------------
    def _step_specs(self, key) -> dict:
        b, a, k = key
        sizes = {"batch": b, "copies": a, "components": k}
        ins, outs = self.bundle.io("step")
        return {n: (concrete_shape(s["shape"], sizes), s["dtype"]) for n, s in {**ins, **outs}.items()}

    def _prepare_step(self, key, bindings: dict, slot: int, engine: Engine | None = None):
        engine = engine or self.engines["step"]
        index, _ = select_profile(engine.stamp, key[0], key[1], key[2], self.bundle.folder)
        return engine.bind(self.device, index, slot, bindings)

    def _fp32_step(self, key, bindings: dict, slot: int) -> None:
        """FP16 guard: recompute this step in float32 into the same output buffers."""
        if self.fp32_step is not None:
            self._prepare_step(key, bindings, slot, self.fp32_step)()
            return
        if self._ort is None:
            from .onnxruntime import OrtBackend

            self._ort = OrtBackend.open(self.bundle.folder, precision="fp32", device="cpu")
        ins, outs = self.bundle.io("step")
        host = {n: self.device.to_host(bindings[n]) for n in ins}
        for n, v in self._ort.run("step", host).items():
            self.device.upload(bindings[n], v)

    # --- what the sampler and benchmarks read ---------------------------------------------------------
    @property
    def fp16_fallbacks(self) -> int:
        """Steps whose FP16 result had a NaN/inf and were recomputed in float32 (since open)."""
        return self.step.fallbacks if self.step is not None else 0

    @property
    def graph_stats(self) -> dict:
        if self.torch_step is not None:
            return self.torch_step.graph_stats
        return self.step.stats.as_dict() if self.step is not None else {}

    def to_device(self, x):
        if self.device.owns(x):
            return x
        x = np.ascontiguousarray(x)
        if x.dtype == np.float64:  # graphs take float32 (base.py)
            x = x.astype(np.float32)
        with self.device.scope():
            buf = self.device.empty(x.shape, x.dtype)
            self.device.upload(buf, x)
        return buf

    def to_host(self, x) -> np.ndarray:
        return self.device.to_host(x) if self.device.owns(x) else np.asarray(x)

    def synchronize(self) -> None:
        self.device.synchronize()


def _shape(x) -> tuple[int, ...]:
    return tuple(int(n) for n in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()
