"""The TensorRT backend: a bundle's engines (built by `tr0n-rt build`, export/engines.py), with the
Langevin step replayed from CUDA graphs. Imports no torch and no TensorRT at module level.

Life cycle of one engine (`Engine`): load (its stamp already checked against this platform, GPU and
TensorRT, engine_stamp.py; the plan deserialised from the bytes verified against the manifest, its
IO checked) -> activate (the device-memory block its execution contexts run in, shared by every
engine: graphs run one at a time; one context per profile and graph slot, made on first use) ->
allocate_buffers (a profile's input and output buffers) -> infer (inputs in, one enqueue, outputs
out). The backend: open (stamps checked, every engine loaded) -> activate all on ONE block sized to
the largest engine -> run.

Engines have static-batch profiles (min = opt = max, engine_profiles.py). A batch between two built
sizes is padded up to the next one; the padding rows are computed and dropped (every graph is per-sample).

The step (step_graphs.py, `StepGraphs`): two CUDA graphs per (batch, copies, components), ping-ponging
the state between two buffer sets, captured after one warm-up enqueue (`Engine.bind` sets shapes and
addresses outside the capture, its enqueue is what is captured). Translator, energy and generator run
through `Engine.infer` (once per sample). Where the step has no engine (its build failed, or it was not
built) and torch with CUDA is present, the step runs in torch inside a torch CUDA graph and the other
graphs still run as engines ("torch-hybrid", `choose_step_path`).

FP16 guard: after every FP16 step, its energy and state are checked on the device; a step with a NaN
or inf is recomputed on the float32 path (the step's fp32 engine if built, else ONNX Runtime's fp32
graph) into the same buffers, and `fp16_fallbacks` counts how often.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle, load_bundle
from ..engine_profiles import concrete_shape, select_profile
from ..engine_stamp import REBUILD, check_engine_compatible, check_engine_source
from ..errors import BackendError, ConfigError
from ..graphs import DYNAMIC_AXES, STATE_NAMES
from .base import Backend
from .cuda import open_device, put
from .io_contract import check_io, check_shape
from .step_graphs import StepGraphs, shape_key

STEP_STATE = {n: f"{n}_next" for n in STATE_NAMES}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendError("TensorRT is not installed: pip install 'tr0n-rt[gpu]' on a machine with an NVIDIA GPU "
                           f"(on Jetson it comes with JetPack), or use --backend onnxruntime ({e})") from None
    return tensorrt


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


# --- which engine runs the step ---------------------------------------------------------------------------
CHUNKED_ONLY = ("energy_grad", "update")  # the chunked step's own graphs: used when built, never required


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

    forward = [g for g in bundle.manifest["graphs"] if g not in ("step",) + CHUNKED_ONLY]  # chunked: optional
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
    """One graph's engine through its life cycle: load -> activate -> allocate_buffers -> infer (module
    docstring). The step's engine stops at activate: StepGraphs owns its buffers and captures `bind`."""

    def __init__(self, trt, bundle: Bundle, graph: str, stamp: dict):
        self.trt, self.bundle, self.graph, self.stamp = trt, bundle, graph, stamp
        self.engine = None  # the deserialised ICudaEngine, from load()
        self.inputs: dict = {}  # name -> (dtype, shape) as the engine declares them
        self.outputs: dict = {}
        self.memory = None  # (pointer, bytes) of the shared device-memory block, from activate()
        self.contexts: dict = {}  # (profile, slot) -> execution context
        self.buffers: dict = {}  # profile index -> {tensor: buffer}

    def load(self, runtime) -> None:
        """Deserialises the plan (the bytes read and checked against the manifest's sha256) and checks
        its IO against the manifest; once."""
        if self.engine is not None:
            return
        trt, bundle = self.trt, self.bundle
        path = bundle.folder / self.stamp["file"]
        plan = bundle.read_verified(self.stamp["file"])  # listed in the manifest, and checked as read
        if self.stamp.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # version-compatible plans carry their lean runtime
        try:
            engine = runtime.deserialize_cuda_engine(plan)
        except Exception:  # some versions raise instead of returning None
            engine = None
        if engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialise {path}; "
                               f"{REBUILD.format(bundle=bundle.folder)}")
        self.inputs, self.outputs = engine_io(trt, engine)
        check_io(bundle, self.graph, path, self.inputs, self.outputs)
        self.engine = engine

    @property
    def memory_size(self) -> int:
        """Bytes of device memory an execution context of this engine needs."""
        e = self.engine
        return int(e.device_memory_size_v2 if hasattr(e, "device_memory_size_v2") else e.device_memory_size)

    def activate(self, memory: tuple[int, int]) -> None:
        """memory: (pointer, bytes >= memory_size), the block every execution context of this engine runs in."""
        self.memory = memory

    def context(self, profile: int, slot: int, stream: int):
        """The execution context of (profile, slot) on the activated memory, made on first use."""
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

    def buffer_specs(self, sizes: dict) -> dict:
        """{tensor: (shape, dtype)} of every input and output at these axis sizes (the manifest's dims)."""
        ins, outs = self.bundle.io(self.graph)
        return {n: (concrete_shape(s["shape"], sizes), s["dtype"]) for n, s in {**ins, **outs}.items()}

    def allocate_buffers(self, device, profile: int, sizes: dict) -> dict:
        """{tensor: buffer} of profile `profile`, allocated on first use at `sizes` (its static shapes)."""
        if profile not in self.buffers:
            self.buffers[profile] = {n: device.empty(*spec) for n, spec in self.buffer_specs(sizes).items()}
        return self.buffers[profile]

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

    def infer(self, device, inputs: dict) -> dict:
        """One run: the call's profile (batch padded up to it), the inputs copied into its buffers, one
        enqueue, the outputs' real rows cloned (they outlive the next call)."""
        ins, outs = self.bundle.io(self.graph)
        sizes = {}  # the call's size of each dynamic axis, read off the inputs and the manifest's dims
        for n, spec in ins.items():
            for d, s in zip(spec["shape"], _shape(inputs[n])):
                if isinstance(d, str):
                    sizes[d] = int(s)
        rows = sizes.get("batch", 1)
        index, profile = select_profile(self.stamp, rows, sizes.get("copies"), sizes.get("components"),
                                        self.bundle.folder)
        padded = {**sizes, **{a: profile[a] for a in DYNAMIC_AXES if profile.get(a) is not None}}
        bufs = self.allocate_buffers(device, index, padded)
        real = {n: device.rows(b, rows) if {**ins, **outs}[n]["shape"][:1] == ["batch"] else b
                for n, b in bufs.items()}
        for n in ins:
            put(device, real[n], inputs[n])
        self.bind(device, index, 0, bufs)()
        return {n: device.clone(real[n]) for n in outs}


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
            e.activate((device.ptr(self.scratch), size))
        self.step = None
        self.fp16_guard = fp16_guard and precision == "fp16" and "step" in engines
        if "step" in engines:
            inputs, outputs = bundle.io("step")
            batched = {n for n, s in {**inputs, **outputs}.items() if s["shape"][:1] == ["batch"]}
            guard = self.fp16_guard
            fixed = tuple(n for n in inputs if n not in STEP_STATE)  # condition, noise, hparams (, aesthetic_weight)
            self.step = StepGraphs(device, STEP_STATE, fixed, ("energy",), batched,
                                   prepare=self._prepare_step, alloc=self._step_specs, use_graphs=cuda_graphs,
                                   check=(lambda out: device.all_finite(list(out.values()))) if guard else None,
                                   fallback=self._fp32_step if guard else None)
        self._ort = None

    @classmethod
    def open(cls, bundle_dir, precision: str = "fp16", device: str = "cuda", cuda_graphs: bool = True,
             fp16_guard: bool = True, device_kind: str = "auto") -> "TrtBackend":
        """Opens a bundle's engines for `precision` (every stamp checked, then every engine loaded);
        device: "cuda" or "cuda:N"."""
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
        engines = {g: Engine(trt, bundle, g, s) for g, s in usable.items()}
        for engine in engines.values():
            engine.load(runtime)
        fp32 = None
        step32 = stamps.get("step", {}).get("fp32")
        if precision == "fp16" and fp16_guard and path.kind == "tensorrt" and step32 and "failed" not in step32:
            check_engine_compatible(step32, trt.__version__, *gpu, bundle=bundle.folder)
            fp32 = Engine(trt, bundle, "step", step32)
            fp32.load(runtime)
        torch_step = None
        if path.kind == "torch-hybrid":
            engines.pop("step", None)
            from .torch import TorchBackend

            torch_step = TorchBackend.open(bundle.folder, device=f"cuda:{device_id}", cuda_graphs=cuda_graphs)
        return cls(bundle, engines, dev, path, precision, cuda_graphs, fp16_guard, fp32, torch_step)

    def load(self, graph: str) -> None:
        """Engines are loaded and activated at open: this checks that the graph has one (a step run in
        torch, torch-hybrid, is prepared by the torch backend)."""
        if graph == "step" and self.torch_step is not None:
            self.torch_step.load(graph)
        else:
            self._engine(graph)

    def _engine(self, graph: str) -> Engine:
        engine = self.engines.get(graph)
        if engine is None:
            raise BackendError(f"bundle {self.bundle.folder} has no {self.precision} engine for graph {graph!r}; "
                               f"{REBUILD.format(bundle=self.bundle.folder)}")
        return engine

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
        return self._engine(graph).infer(self.device, inputs)

    # --- the step's graphs ---------------------------------------------------------------------------
    def _step_specs(self, key) -> dict:
        """{tensor: (shape, dtype)} of the step at key = (batch, copies, components)."""
        b, a, k = key
        return self.engines["step"].buffer_specs({"batch": b, "copies": a, "components": k})

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
    def memory_model(self):
        """The bundle's counted bytes for this precision. The engines' activations live in one shared block
        (self.scratch, sized at open), so what a plan adds at run time is the inputs and outputs."""
        from ..memory import MemoryModel

        runnable = set(self.engines) | ({"step"} if self.torch_step is not None else set())
        return MemoryModel(self.bundle.manifest, self.precision, graphs=runnable)

    def memory_free(self) -> int | None:
        free = getattr(self.device, "free_bytes", None)
        return free() if free is not None else None

    @property
    def fp16_fallbacks(self) -> int | None:
        """Steps whose FP16 result had a NaN/inf and were recomputed in float32 (since open); None without
        a guard (float32 engines, fp16_guard=False, or a step run in torch)."""
        return self.step.fallbacks if self.fp16_guard else None

    @property
    def graph_sources(self) -> dict[str, str]:
        """graph -> the plan file its engine was deserialised from ("torch": the step runs in torch)."""
        out = {g: e.stamp["file"] for g, e in self.engines.items()}
        if self.torch_step is not None:
            out["step"] = "torch"
        return out

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
