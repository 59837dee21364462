"""The onnxruntime backend: a bundle's ONNX graphs on the CPU, CUDA or TensorRT execution provider.

Life cycle: open (manifest, checksums, declared IO of every graph checked against its file) ->
load (one session per graph, on first use or when asked) -> run. Imports no torch.

CPU: inputs and outputs are numpy arrays. Sessions are optimised once (ORT_ENABLE_ALL) and the
optimised graph is cached (ort_cache.py), so a later open loads it with optimisation off. Graphs whose
weights are in a file of their own (`{graph}.onnx.data`, large models) are loaded by path, so ONNX
Runtime finds it. Integrity: a graph is handed to ONNX Runtime as the bytes that were hashed against
the manifest when its session is made (graphs with a weights file: re-hashed right before loading by
path); cached graphs are checked against their own digest (ort_cache.py).
CUDA / TensorRT: IO binding. Inputs that are already OrtValues on the device are bound as they are,
outputs are bound to the device and returned as OrtValues, so the Langevin state never leaves the
GPU between steps. Only `to_host` copies back (and the FP16 guard, which reads the step's outputs).

FP16 guard (as the TensorRT backend's): an FP16 step (or chunked-step graph: energy_grad, update) whose
outputs hold a NaN or inf is run again on the bundle's float32 graph, and `fp16_fallbacks` counts how often (the sample JSON reports it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import PRECISIONS, Bundle, load_bundle
from ..errors import BackendError, ConfigError
from .base import Backend
from .io_contract import check_data_files, check_io, check_shape
from .onnx_reader import onnx_io
from .ort_cache import GraphCache, cache_root, entry_key

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
SHORT_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
AUTO = (TENSORRT, CUDA, CPU)  # providers=None: the fastest that this onnxruntime build has
GPU_PROVIDERS = (TENSORRT, CUDA)
# What a CPU session allocates per activation byte counted from the float32 graph file (memory.py): its
# optimised graph's layouts (NCHWc reorders), kernel scratch and the arena. Measured on ViT-B-32 +
# StyleGAN2-256 and BigGAN-512, batch 1 and 4, A = 8 to 50, step and chunked: 1.43-1.8. FP16 graphs on the
# CPU run mostly in float32 (inserted casts): their peaks were 1.2-1.5x the float32 counts, so they are
# planned from those (benchmarks/RESULTS.md, "Memory").
CPU_ACTIVATION_FACTOR = 1.8
# ...and what a run adds whatever its size: BigGAN-512 at batch 1 took 0.6 GiB more than 1.8x its counts.
CPU_FIXED_OVERHEAD = 2**30
GUARDED = ("step", "energy_grad", "update")  # FP16 graphs whose non-finite outputs are recomputed in float32


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"the onnxruntime backend needs onnxruntime ({e}): `pip install 'tr0n-rt[cpu]'` "
                           "(or `tr0n-rt[gpu]` for CUDA/TensorRT)") from None
    return onnxruntime


def resolve_providers(ort, providers=None) -> list[str]:
    """None -> TensorRT, CUDA, CPU as available; else each name (full or cpu/cuda/tensorrt) must be available."""
    available = ort.get_available_providers()
    if providers is None:
        return [p for p in AUTO if p in available]
    if isinstance(providers, str):
        providers = [providers]
    out = []
    for p in providers:
        full = SHORT_NAMES.get(str(p).lower(), p)
        if full not in available:
            raise BackendError(f"execution provider {p!r} is not available in this onnxruntime "
                               f"{ort.__version__} (available: {', '.join(available)}); the GPU providers come "
                               "with `pip install onnxruntime-gpu` (never together with onnxruntime)")
        out.append(full)
    return out


def providers_for_device(device: str) -> tuple[list[str], int]:
    """open_backend's device string -> (providers, device id): cpu -> CPU; cuda or cuda:N -> CUDA."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["cpu"], 0
    if kind == "cuda" and (index == "" or index.isdigit()):
        return ["cuda"], int(index or 0)
    raise ConfigError(f"unknown device {device!r} for the onnxruntime backend; use cpu, cuda or cuda:N")


@dataclass
class LoadedGraph:
    session: object  # onnxruntime.InferenceSession
    source: str  # "cache": the optimised graph cached by an earlier open; "graph": the bundle's own file
    seconds: float  # session creation time
    cache_file: Path | None  # where the optimised graph is cached (None: not cached, e.g. a GPU provider)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers: list[str], precision: str = "fp32",
                 cache_dir: Path | None = None, device_id: int = 0, weights_files: dict[str, list[str]] | None = None,
                 threads: int | None = None, spinning: bool = True, fp16_guard: bool = True):
        """weights_files: graph -> the external weights files its graph file reads (open() reads them once).
        threads: intra-op threads of every session (default: onnxruntime's, one per core); spinning=False
        lets idle workers sleep at once (onnxruntime's session.intra_op.allow_spinning = 0), which helps
        when the cores are shared with other work and costs a little on an idle machine."""
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.threads, self.spinning = threads, spinning
        self.shared_arena = SESSION_SETTINGS["cpu_arena"]["shared"]
        self.fp16_guard = fp16_guard and precision == "fp16"
        self._fallbacks, self._fp32 = 0, None  # FP16 guard: steps recomputed, the float32 companion backend
        self.ort = import_onnxruntime()
        self.weights_files = dict(weights_files or {})
        self.bundle, self.info = bundle, bundle.info
        self.providers, self.precision, self.device_id = providers, precision, device_id
        self.cache_dir = cache_root(cache_dir)
        self.cache = GraphCache(self.cache_dir)
        self.on_gpu = providers[0] in GPU_PROVIDERS
        self.graphs: dict[str, LoadedGraph] = {}

    @classmethod
    def open(cls, bundle_dir, precision: str = "fp32", providers=None, cache_dir=None, device_id: int = 0,
             device: str | None = None, threads: int | None = None, spinning: bool = True,
             fp16_guard: bool = True) -> "OrtBackend":
        """Opens a bundle; device ("cpu", "cuda[:N]") picks the providers when `providers` is not given;
        threads, spinning and fp16_guard: see __init__ and the module docstring."""
        ort = import_onnxruntime()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
        if providers is None and device is not None:
            providers, device_id = providers_for_device(device)
        resolved = resolve_providers(ort, providers)
        if not resolved:
            raise BackendError(f"no usable execution provider (available: {', '.join(ort.get_available_providers())})")
        bundle = load_bundle(bundle_dir)
        weights_files = {}
        for graph in bundle.manifest["graphs"]:  # before any sampling: files exist and declare the manifest's IO
            path = bundle.graph_file(graph, precision)
            inputs, outputs, weights_files[graph] = onnx_io(path)
            check_io(bundle, graph, path, inputs, outputs)
            check_data_files(bundle, graph, path, weights_files[graph])
        return cls(bundle, resolved, precision, cache_dir, device_id, weights_files, threads, spinning, fp16_guard)

    # --- sessions ----------------------------------------------------------------------------------
    def load(self, graph: str) -> None:
        """Creates the graph's session now (from the optimised-graph cache when it has one); idempotent."""
        self.loaded(graph)

    def loaded(self, graph: str) -> LoadedGraph:
        """The graph's session and where it came from, created on first use."""
        if graph in self.graphs:
            return self.graphs[graph]
        if not self.bundle.has(graph):
            raise BackendError(f"bundle {self.bundle.folder} has no {graph!r} graph (it has: "
                               f"{', '.join(self.bundle.manifest['graphs'])})")
        path = self.bundle.graph_file(graph, self.precision)
        tick = time.perf_counter()
        session, source, cache_file = self._create(graph, path)
        seconds = time.perf_counter() - tick
        self.graphs[graph] = LoadedGraph(session, source, seconds, cache_file)
        return self.graphs[graph]

    def _create(self, graph: str, path: Path):
        """CPU: load the cached optimised graph if there is a usable one, else optimise and cache it.
        Optimised CPU graphs are not portable to other providers (fused EP-specific ops), so GPU
        providers are never cached here (TensorRT keeps its own engine cache)."""
        if self.on_gpu:
            return self._checked_session(graph, path, optimize=True, source=self._verified_source(graph, path)), \
                "graph", None
        cache_file = self.cache.entry(graph, self.cache_key(graph))

        def from_cache(cached: Path | bytes):
            return self._checked_session(graph, cache_file, optimize=False, source=cached)
        session = self.cache.open(cache_file, from_cache)
        if session is not None:
            return session, "cache", cache_file
        source = self._verified_source(graph, path)

        def optimise(save_to: Path | None, weights_file: str | None):
            return self._checked_session(graph, path, optimize=True, save_to=save_to, weights_file=weights_file,
                                         source=source)
        files = self.bundle.manifest["files"]
        graph_bytes = sum(files[name]["bytes"] for name in self._graph_files(graph))
        session, cached = self.cache.store(cache_file, graph_bytes, optimise)
        return session, "graph", cached

    def _verified_source(self, graph: str, path: Path) -> Path | bytes:
        """What ONNX Runtime reads for a bundle graph, checked against the manifest right before: the
        graph's bytes, hashed as read, when its weights are inline (so a file replaced after open() is
        never run); else its path, after the graph and weights files are hashed again."""
        names = self._graph_files(graph)
        if len(names) == 1:
            return self.bundle.read_verified(names[0])
        self.bundle.verify(names)
        return path

    def _checked_session(self, graph: str, path: Path, optimize: bool, save_to: Path | None = None,
                         weights_file: str | None = None, source: Path | bytes | None = None):
        """A session whose providers are those asked for and whose IO is the manifest's. source: what
        ONNX Runtime reads (the file's verified bytes, or a path); default: path, as it is."""
        session = self._session(path if source is None else source, optimize, save_to, weights_file, name=path,
                                graph=graph)
        if self.on_gpu and self.providers[0] not in session.get_providers():
            raise BackendError(f"{self.providers[0]} failed to start (the session fell back to "
                               f"{', '.join(session.get_providers())}); check the CUDA/cuDNN/TensorRT install "
                               "or open with device='cpu'")
        check_io(self.bundle, graph, path, *session_io(session))
        return session

    def cache_key(self, graph: str) -> str:
        """The graph's optimised-graph cache key (ort_cache.entry_key): its files' sha256 as the manifest
        lists them, this onnxruntime, these providers."""
        files = self.bundle.manifest["files"]
        return entry_key([files[name]["sha256"] for name in self._graph_files(graph)], self.ort.__version__,
                         self.providers)

    def _graph_files(self, graph: str) -> list[str]:
        """The graph's file and the weights files it reads, as named in the manifest's files."""
        path = self.bundle.graph_file(graph, self.precision)
        if graph not in self.weights_files:  # a backend built without open()
            self.weights_files[graph] = onnx_io(path)[2]
        return [path.name, *self.weights_files[graph]]

    def _session(self, source: Path | bytes, optimize: bool, save_to: Path | None = None,
                 weights_file: str | None = None, name: Path | None = None, graph: str | None = None):
        """source: a graph file or its bytes (name: the file, for messages); weights_file: with save_to, the
        optimised graph's weights go to that file (a name beside save_to)."""
        path = name if name is not None else source
        ort = self.ort
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: the NCHWc "hardware specific" warning is handled by the key
        so.graph_optimization_level = (optimization_level(ort, self.precision, self.on_gpu) if optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not self.on_gpu and self.shared_arena:
            share_cpu_arena(ort)
            so.add_session_config_entry("session.use_env_allocators", "1")
            so.enable_mem_pattern = SESSION_SETTINGS["cpu_arena"]["memory_pattern"]
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
            so.add_session_config_entry("session.save_model_format", "ONNX")
            if weights_file is not None:
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights_file)
        try:
            model = source if isinstance(source, bytes) else str(source)
            return ort.InferenceSession(model, sess_options=so, providers=self._provider_options(graph))
        except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, ...) share no base
            raise BackendError(f"onnxruntime {ort.__version__} cannot load {path} on "
                               f"{', '.join(self.providers)}: {e}") from None

    def _provider_options(self, graph: str | None = None) -> list[tuple[str, dict]]:
        """graph: TensorRT's engine cache for it lives in a folder named by its cache_key (the graph's
        sha256 included): the provider keys its own cache on the graph's structure and names, not on
        its weights, so a re-exported graph of the same shape could otherwise reuse a stale engine."""
        out = []
        for p in self.providers:
            if p == TENSORRT:
                trt_cache = self.cache.tensorrt_folder(graph, self.cache_key(graph) if graph else None)
                out.append((p, {"device_id": self.device_id, "trt_engine_cache_enable": True,
                                "trt_engine_cache_path": str(trt_cache),
                                "trt_fp16_enable": self.precision == "fp16"}))
            elif p == CUDA:
                out.append((p, {"device_id": self.device_id}))
            else:
                out.append((p, {}))
        return out

    # --- running -----------------------------------------------------------------------------------
    def run(self, graph: str, inputs: dict) -> dict:
        """Runs one graph. CPU: numpy in, numpy out. GPU: numpy or device OrtValues in, OrtValues out."""
        out = self._run(graph, inputs)
        if graph in GUARDED and self.fp16_guard and not all(np.isfinite(self.to_host(v)).all() for v in out.values()):
            self._fallbacks += 1
            if self._fp32 is None:
                # the manifest opened, not the folder's current one (a re-export may have replaced it)
                self._fp32 = OrtBackend(self.bundle, self.providers, "fp32", self.cache_dir, self.device_id,
                                        threads=self.threads, spinning=self.spinning, fp16_guard=False)
            out = self._fp32.run(graph, inputs)
        return out

    def memory_model(self):
        """The bundle's counted bytes; on the CPU each counted activation byte is planned as
        CPU_ACTIVATION_FACTOR bytes."""
        from ..memory import MemoryModel

        if self.on_gpu:
            return MemoryModel(self.bundle.manifest, self.precision)
        return MemoryModel(self.bundle.manifest, self.precision, activation_factor=CPU_ACTIVATION_FACTOR,
                           counted_as="fp32", fixed_overhead=CPU_FIXED_OVERHEAD)

    def memory_free(self) -> int | None:
        """The host's MemAvailable on the CPU; None on a GPU (onnxruntime does not tell a device's free memory)."""
        from ..memory import available_host_bytes

        return None if self.on_gpu else available_host_bytes()

    @property
    def fp16_fallbacks(self) -> int | None:
        """FP16 steps with a NaN or inf, recomputed in float32 since open (None: float32 graphs, no guard)."""
        return self._fallbacks if self.fp16_guard else None

    @property
    def graph_sources(self) -> dict[str, str]:
        """graph -> "cache" (the optimised graph an earlier open cached) or "graph" (the bundle's file),
        for the sessions made so far."""
        return {g: loaded.source for g, loaded in self.graphs.items()}

    def _run(self, graph: str, inputs: dict) -> dict:
        loaded = self.loaded(graph)
        declared, _ = self.bundle.io(graph)
        missing = [n for n in declared if n not in inputs]
        extra = [n for n in inputs if n not in declared]
        if missing or extra:
            raise BackendError(f"graph {graph!r} takes inputs {', '.join(declared)}; "
                               f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(extra) or '-'}")
        for n, v in inputs.items():
            check_shape(graph, n, v.shape() if isinstance(v, self.ort.OrtValue) else np.shape(v),
                        declared[n]["shape"])
        session = loaded.session
        names = [o.name for o in session.get_outputs()]
        try:
            if not self.on_gpu:
                feed = {n: self._host_input(graph, n, v, declared[n]["dtype"]) for n, v in inputs.items()}
                return dict(zip(names, session.run(names, feed)))
            binding = session.io_binding()
            for n, v in inputs.items():
                if self._on_device(v) and dtype_of_ort(v.data_type()) == np.dtype(declared[n]["dtype"]).name:
                    binding.bind_ortvalue_input(n, v)  # no copy: last step's output is this step's input
                else:
                    binding.bind_cpu_input(n, self._host_input(graph, n, v, declared[n]["dtype"]))
            for n in names:
                binding.bind_output(n, "cuda", self.device_id)
            # The CUDA EP synchronises its stream at the end of a run, so the outputs are complete here.
            session.run_with_iobinding(binding)
            return dict(zip(names, binding.get_outputs()))
        except BackendError:
            raise
        except Exception as e:  # onnxruntime's InvalidArgument, Fail, ...: name the graph
            raise BackendError(f"onnxruntime failed running graph {graph!r}: {e}") from None

    def _on_device(self, x) -> bool:
        return isinstance(x, self.ort.OrtValue) and x.device_name().lower() != "cpu"

    def _host_input(self, graph: str, name: str, x, dtype: str) -> np.ndarray:
        """x as a contiguous numpy array of the declared dtype (int -> int64 tokens, float64 -> float32)."""
        if isinstance(x, self.ort.OrtValue):
            x = x.numpy()
        x, want = np.asarray(x), np.dtype(dtype)
        if x.dtype != want and x.dtype.kind != want.kind and not (x.dtype.kind in "iu" and want.kind in "iu"):
            raise BackendError(f"input {name!r} of graph {graph!r} is {x.dtype}, the graph takes {want}")
        return np.ascontiguousarray(x, dtype=want)

    def to_host(self, x) -> np.ndarray:
        return x.numpy() if isinstance(x, self.ort.OrtValue) else np.asarray(x)

    def to_device(self, x):
        """numpy -> an OrtValue on the GPU (numpy on CPU); values this backend returned pass through."""
        if isinstance(x, self.ort.OrtValue) or not self.on_gpu:
            return x
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), "cuda", self.device_id)

    def synchronize(self) -> None:
        """Nothing to wait for: CPU runs are synchronous, and CUDA runs synchronise before returning."""


# --- onnxruntime's names for what a session declares ---------------------------------------------------
ORT_DTYPES = {"float": "float32", "double": "float64"}


# How this backend makes sessions; every bundle's manifest carries it (field "onnxruntime"), so that a
# client in another language can make the same sessions and reproduce tr0n-rt's numbers.
SESSION_SETTINGS = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "cpu_arena": {
        "shared": True,
        "arena_extend_strategy": "kSameAsRequested",
        "memory_pattern": False,
        "why": "one CPU arena for every session of the process (onnxruntime.create_and_register_allocator, "
               "session.use_env_allocators = 1): the graphs of a step run one after another, so they reuse one "
               "another's memory instead of each session's own arena keeping its largest run. Without the "
               "memory pattern (enable_mem_pattern = False) a run allocates tensor by tensor from the freed "
               "chunks; with it, the second run's one planned block did not fit them and the arena grew: "
               "ViT-B-32 + StyleGAN2-256, batch 1, A = 8: the step added 1.11 GiB instead of 1.92 "
               "(benchmarks/RESULTS.md, 'Memory'). No effect on results",
    },
    "fp16_graphs_on_cpu": {
        "graph_optimization_level": "ORT_ENABLE_EXTENDED",
        "why": "onnxruntime 1.32 crashes (segmentation fault) creating a CPU session of the FP16 ViT-B-32 text "
               "encoder at ORT_ENABLE_ALL (its CPU layout transforms); ORT_ENABLE_EXTENDED runs it. FP16 graphs "
               "are for GPUs; on the CPU they run to be checked",
    },
}


def share_cpu_arena(ort) -> None:
    """Registers, once per process, the CPU arena that every CPU session then uses (SESSION_SETTINGS)."""
    global _ARENA_SHARED
    if not _ARENA_SHARED:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        _ARENA_SHARED = True


_ARENA_SHARED = False


def optimization_level(ort, precision: str, on_gpu: bool):
    """The level SESSION_SETTINGS names: ORT_ENABLE_ALL, except FP16 graphs on the CPU."""
    name = SESSION_SETTINGS["graph_optimization_level"]
    if precision == "fp16" and not on_gpu:
        name = SESSION_SETTINGS["fp16_graphs_on_cpu"]["graph_optimization_level"]
    return getattr(ort.GraphOptimizationLevel, name)


def dtype_of_ort(type_str: str) -> str:
    """onnxruntime's 'tensor(float)' -> 'float32'."""
    inner = type_str.removeprefix("tensor(").removesuffix(")")
    return ORT_DTYPES.get(inner, inner)


def session_io(session) -> tuple[dict, dict]:
    """name -> (dtype, shape) of a session's inputs and outputs; dims are int, str (symbolic) or None."""
    def table(args):
        return {a.name: (dtype_of_ort(a.type), list(a.shape) if a.shape is not None else None) for a in args}

    return table(session.get_inputs()), table(session.get_outputs())
