"""The onnxruntime backend: a bundle's ONNX graphs on the CPU, CUDA or TensorRT execution provider.

Life cycle: open (manifest, checksums, declared IO of every graph checked against its file) ->
load (one session per graph, on first use) -> run. Imports no torch.

CPU: inputs and outputs are numpy arrays. Sessions are optimised once (ORT_ENABLE_ALL) and the
optimised graph is cached, so a later open loads it with optimisation off. Graphs whose weights are in
a file of their own (`{graph}.onnx.data`, large models) are loaded by path, so ONNX Runtime finds it.
Integrity: a graph is handed to ONNX Runtime as the bytes that were hashed against the manifest when
its session is made (graphs with a weights file: re-hashed right before loading by path), and every
cached optimised graph has its sha256 beside it (`.sha256`): one that no longer matches is rebuilt.
CUDA / TensorRT: IO binding. Inputs that are already OrtValues on the device are bound as they are,
outputs are bound to the device and returned as OrtValues, so the Langevin state never leaves the
GPU between steps. Only `to_host` copies back (and the FP16 guard, which reads the step's outputs).

FP16 guard (as the TensorRT backend's): an FP16 step whose outputs hold a NaN or inf is run again on
the bundle's float32 step graph, and `fp16_fallbacks` counts how often (the sample JSON reports it).
"""
from __future__ import annotations

import functools
import hashlib
import mmap
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..bundle import PRECISIONS, Bundle, load_bundle, sha256_file
from ..errors import BackendError, BundleError, ConfigError
from .base import Backend

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
SHORT_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
AUTO = (TENSORRT, CUDA, CPU)  # providers=None: the fastest that this onnxruntime build has
GPU_PROVIDERS = (TENSORRT, CUDA)
# Optimised graphs of bigger graphs are cached as graph + weights file: constant folding (transposed
# weights) can take them past protobuf's 2 GB.
CACHE_INLINE_BYTES = 256 << 20


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"the onnxruntime backend needs onnxruntime ({e}): `pip install 'tr0n-rt[cpu]'` "
                           "(or `tr0n-rt[gpu]` for CUDA/TensorRT)") from None
    return onnxruntime


def cache_root(cache_dir=None) -> Path:
    """cache_dir, else $TR0N_RT_CACHE/ort, else ~/.cache/tr0n-rt/ort."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("TR0N_RT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tr0n-rt") / "ort"


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
        self.fp16_guard = fp16_guard and precision == "fp16"
        self._fallbacks, self._fp32 = 0, None  # FP16 guard: steps recomputed, the float32 companion backend
        self.ort = import_onnxruntime()
        self.weights_files = dict(weights_files or {})
        self.bundle, self.info = bundle, bundle.info
        self.providers, self.precision, self.device_id = providers, precision, device_id
        self.cache_dir = cache_root(cache_dir)
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
    def load(self, graph: str) -> LoadedGraph:
        """The graph's session, created on first use (from the optimised-graph cache when it has one)."""
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
        cache_file = self.cache_dir / f"{graph}.{self.cache_key(graph)}.onnx"
        if cache_file.is_file():
            try:
                cached = cached_source(cache_file)
                return self._checked_session(graph, cache_file, optimize=False, source=cached), "cache", cache_file
            except (BackendError, BundleError, OSError):  # unreadable, altered, or not this graph's IO: rebuild
                for f in cache_files(cache_file):
                    f.unlink(missing_ok=True)
        source = self._verified_source(graph, path)
        try:
            files = self.bundle.manifest["files"]
            if sum(files[name]["bytes"] for name in self._graph_files(graph)) > CACHE_INLINE_BYTES:
                session = self._save_with_weights_file(graph, path, cache_file, source)
            else:
                with atomic_path(cache_file) as tmp:  # optimise into a temp name, then os.replace
                    session = self._checked_session(graph, path, optimize=True, save_to=tmp, source=source)
        except OSError:  # no writable cache folder: run uncached
            return self._checked_session(graph, path, optimize=True, source=source), "graph", None
        except BackendError as e:
            # ORT cannot save an inline optimised graph past protobuf's 2 GB (a graph under
            # CACHE_INLINE_BYTES that constant folding grows that far): run it uncached rather than not at all
            if "Protobuf serialization failed" not in str(e):
                raise
            return self._checked_session(graph, path, optimize=True, source=source), "graph", None
        try:
            record_digest(cache_file)
        except OSError:  # the entry stays without a digest: the next open rebuilds it
            return session, "graph", None
        return session, "graph", cache_file

    def _verified_source(self, graph: str, path: Path) -> Path | bytes:
        """What ONNX Runtime reads for a bundle graph, checked against the manifest right before: the
        graph's bytes, hashed as read, when its weights are inline (so a file replaced after open() is
        never run); else its path, after the graph and weights files are hashed again."""
        names = self._graph_files(graph)
        if len(names) == 1:
            return self.bundle.read_verified(names[0])
        self.bundle.verify(names)
        return path

    def _save_with_weights_file(self, graph: str, path: Path, cache_file: Path, source: Path | bytes):
        """Optimises a large graph into cache_file plus its weights in `{cache_file.name}.data`: folded
        constants (transposed weights) can take the optimised graph past protobuf's 2 GB. Both are
        written under their final names in a private folder, then moved into place, weights first."""
        data = cache_file.with_name(f"{cache_file.name}.data")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{cache_file.name}.", dir=self.cache_dir) as stage:
            staged = Path(stage) / cache_file.name
            session = self._checked_session(graph, path, optimize=True, save_to=staged, weights_file=data.name,
                                            source=source)
            if staged.with_name(data.name).exists():  # absent when every weight is under ORT's 1 KB minimum
                os.replace(staged.with_name(data.name), data)
            os.replace(staged, cache_file)
        return session

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
        """sha256 of the graph file and of its weights file if it has one (manifest), onnxruntime version,
        providers, and the host CPU: graphs optimised with ORT_ENABLE_ALL may use layouts tuned to this
        CPU's vector width (NCHWc). A graph with external weights records only their offsets, so another
        export's weights can come with the very same graph file."""
        files = self.bundle.manifest["files"]
        parts = [files[name]["sha256"] for name in self._graph_files(graph)]
        parts += [self.ort.__version__, ",".join(self.providers), host_cpu()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

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
                trt_cache = self.cache_dir / "tensorrt" / (f"{graph}.{self.cache_key(graph)}" if graph else "shared")
                trt_cache.mkdir(parents=True, exist_ok=True)
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
        if graph == "step" and self.fp16_guard and not all(np.isfinite(self.to_host(v)).all() for v in out.values()):
            self._fallbacks += 1
            if self._fp32 is None:
                # the manifest opened, not the folder's current one (a re-export may have replaced it)
                self._fp32 = OrtBackend(self.bundle, self.providers, "fp32", self.cache_dir, self.device_id,
                                        threads=self.threads, spinning=self.spinning, fp16_guard=False)
            out = self._fp32.run("step", inputs)
        return out

    @property
    def fp16_fallbacks(self) -> int | None:
        """FP16 steps with a NaN or inf, recomputed in float32 since open (None: float32 graphs, no guard)."""
        return self._fallbacks if self.fp16_guard else None

    def _run(self, graph: str, inputs: dict) -> dict:
        loaded = self.load(graph)
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


# --- the IO a graph declares, and whether it is the manifest's -----------------------------------------
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
ORT_DTYPES = {"float": "float32", "double": "float64"}


def optimization_level(ort, precision: str, on_gpu: bool):
    """ORT_ENABLE_ALL, except FP16 graphs on the CPU: onnxruntime 1.32 segfaults creating a CPU session
    at ENABLE_ALL (its layout transforms) on the FP16 ViT-B-32 text encoder; EXTENDED runs it. The CPU
    has no fast FP16 kernels anyway: FP16 graphs are for GPUs, and run on the CPU to be checked."""
    if precision == "fp16" and not on_gpu:
        return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def dtype_of_ort(type_str: str) -> str:
    """onnxruntime's 'tensor(float)' -> 'float32'."""
    inner = type_str.removeprefix("tensor(").removesuffix(")")
    return ORT_DTYPES.get(inner, inner)


def cache_files(cache_file: Path) -> list[Path]:
    """An optimised-graph cache entry's files: the graph, its weights file (large graphs), its digest."""
    return [cache_file, cache_file.with_name(f"{cache_file.name}.data"),
            cache_file.with_name(f"{cache_file.name}.sha256")]


def record_digest(cache_file: Path) -> None:
    """Writes the sha256 of a new cache entry's graph (and weights file) beside it: cached_source
    refuses an entry that no longer matches, so a cache file altered or swapped is rebuilt, not run."""
    graph, data, digest = cache_files(cache_file)
    lines = [sha256_file(graph)] + ([sha256_file(data)] if data.is_file() else [])
    with atomic_path(digest) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def cached_source(cache_file: Path) -> Path | bytes:
    """What ONNX Runtime reads for a cache entry, checked against its recorded digest: the graph's bytes
    as hashed (inline weights), or its path after graph and weights file are hashed. BundleError when
    the digest is missing or differs (the caller rebuilds the entry)."""
    graph, data, digest = cache_files(cache_file)
    recorded = digest.read_text().split() if digest.is_file() else []
    if data.is_file():
        source, actual = graph, [sha256_file(graph), sha256_file(data)]
    else:
        source = graph.read_bytes()
        actual = [hashlib.sha256(source).hexdigest()]
    if recorded != actual:
        raise BundleError(f"cached optimised graph {graph} does not match its recorded sha256")
    return source


def check_shape(graph: str, name: str, shape, dims: list) -> None:
    """BackendError unless shape fits the manifest's dims (ints fixed, strings dynamic)."""
    if len(shape) != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, shape)):
        hint = ""
        if graph == "step" and len(dims) == 3 == len(shape) and isinstance(dims[1], int) and dims[1] != shape[1]:
            hint = (f": this step graph takes exactly {dims[1]} mixture components, and sample mode and prior "
                    "init use 1. Re-export the bundle (tr0n-rt export): exports since 2026-12-05 keep K dynamic")
        raise BackendError(f"input {name!r} of graph {graph!r} has shape {list(shape)}; the bundle declares "
                           f"{dims} (strings are dynamic axes){hint}")


def session_io(session) -> tuple[dict, dict]:
    """name -> (dtype, shape) of a session's inputs and outputs; dims are int, str (symbolic) or None."""
    def table(args):
        return {a.name: (dtype_of_ort(a.type), list(a.shape) if a.shape is not None else None) for a in args}

    return table(session.get_inputs()), table(session.get_outputs())


def check_io(bundle: Bundle, graph: str, path: Path, inputs: dict, outputs: dict) -> None:
    """BundleError unless the graph's inputs and outputs are the manifest's: names, dtypes, ranks, static dims.
    A dim the manifest declares dynamic ("batch", "copies") must not be fixed in the graph."""
    declared = bundle.io(graph)
    problems = []
    for kind, want, have in (("input", declared[0], inputs), ("output", declared[1], outputs)):
        for name in want:
            if name not in have:
                problems.append(f"{kind} {name!r} is declared in the manifest but the graph has none "
                                f"(graph {kind}s: {', '.join(have)})")
        for name in have:
            if name not in want:
                problems.append(f"graph {kind} {name!r} is not declared in the manifest")
        for name in [n for n in want if n in have]:
            problems += [f"{kind} {name!r}: {p}" for p in tensor_problems(want[name], *have[name])]
    if problems:
        raise BundleError(f"bundle {bundle.folder}: graph {graph!r} ({path.name}) does not match the manifest: "
                          f"{'; '.join(problems)}. The bundle is inconsistent: re-export it with `tr0n-rt export`")


def tensor_problems(spec: dict, dtype: str, shape: list | None) -> list[str]:
    problems = []
    try:
        want = np.dtype(spec["dtype"]).name
    except (TypeError, KeyError):
        return [f"manifest dtype {spec.get('dtype')!r} is not a numpy dtype name"]
    if want != dtype:
        problems.append(f"manifest says {want}, the graph has {dtype}")
    dims = spec.get("shape")
    if shape is None or not isinstance(dims, list):
        return problems if isinstance(dims, list) else problems + [f"manifest shape {dims!r} is not a list"]
    if len(dims) != len(shape):
        return problems + [f"manifest says rank {len(dims)} {dims}, the graph has rank {len(shape)} {shape}"]
    for axis, (w, h) in enumerate(zip(dims, shape)):
        if isinstance(w, int) and isinstance(h, int) and w != h:
            problems.append(f"axis {axis} is {h} in the graph, {w} in the manifest")
        elif isinstance(w, str) and isinstance(h, int):
            problems.append(f"axis {axis} is fixed to {h} in the graph, dynamic {w!r} in the manifest")
    return problems


def onnx_io(path: Path) -> tuple[dict, dict, list[str]]:
    """name -> (dtype, shape) of an ONNX file's graph inputs (initializers excluded) and outputs, and the
    files its external-data initializers read (relative names), from the protobuf without loading
    weights or needing the onnx package.
    ModelProto.graph = 7; GraphProto.initializer = 5, input = 11, output = 12; TensorProto.name = 8,
    external_data = 13 (StringStringEntryProto: key = 1, value = 2; the file is key "location")."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = [v for field, wire, v in fields(buf, 0, len(buf)) if field == 7 and wire == 2]
            if not graph:
                raise ValueError("no graph")
            ios, init, data_files = {11: {}, 12: {}}, set(), []
            for field, wire, v in fields(buf, *graph[-1]):
                if field in ios and wire == 2:
                    name, info = value_info(buf, *v)
                    ios[field][name] = info
                elif field == 5 and wire == 2:
                    for f_t, w_t, t in fields(buf, *v):
                        if f_t == 8 and w_t == 2:
                            init.add(text(buf, t))
                        elif f_t == 13 and w_t == 2:
                            entry = {k: text(buf, x) for k, w_x, x in fields(buf, *t) if w_x == 2}
                            if entry.get(1) == "location" and entry.get(2) not in data_files:
                                data_files.append(entry[2])
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as e:
        raise BundleError(f"graph file {path} is not a readable ONNX model ({e}); re-export the bundle") from None
    return {n: io for n, io in ios[11].items() if n not in init}, ios[12], data_files


def check_data_files(bundle: Bundle, graph: str, path: Path, data_files: list[str]) -> None:
    """BundleError unless every weights file the graph reads is listed in the manifest's files (and
    therefore checked against its sha256 on load)."""
    unlisted = [f for f in data_files if f not in bundle.manifest["files"]]
    if unlisted:
        raise BundleError(f"bundle {bundle.folder}: graph {graph!r} ({path.name}) reads weights from "
                          f"{', '.join(unlisted)}, which the manifest does not list: the bundle is inconsistent; "
                          "re-export it with `tr0n-rt export`")


def value_info(buf, start, end) -> tuple[str, tuple]:
    """ValueInfoProto: name = 1, type = 2 -> TypeProto.tensor_type = 1 -> elem_type = 1, shape = 2 ->
    TensorShapeProto.dim = 1 -> Dimension: dim_value = 1 | dim_param = 2."""
    name, dtype, shape = "", None, None
    for field, wire, v in fields(buf, start, end):
        if field == 1 and wire == 2:
            name = text(buf, v)
        elif field == 2 and wire == 2:
            for f_t, w_t, tensor in fields(buf, *v):
                if f_t != 1 or w_t != 2:
                    continue
                for f_e, w_e, x in fields(buf, *tensor):
                    if f_e == 1 and w_e == 0:
                        dtype = ONNX_DTYPES.get(x, f"onnx type {x}")
                    elif f_e == 2 and w_e == 2:
                        shape = [dimension(buf, *d) for f_d, w_d, d in fields(buf, *x) if f_d == 1 and w_d == 2]
    return name, (dtype, shape)


def dimension(buf, start, end):
    for field, wire, v in fields(buf, start, end):
        if field == 1 and wire == 0:
            return v
        if field == 2 and wire == 2:
            return text(buf, v)
    return None


def text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode()


def fields(buf, start: int, end: int):
    """(field number, wire type, value) of one protobuf message in buf[start:end]; a length-delimited
    value is its (start, end) span, so large weights are skipped, never read."""
    out, i = [], start
    while i < end:
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = (i, i + n), i + n
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {i}")
        out.append((field, wire, value))
    if i != end:
        raise ValueError(f"message overruns its end at byte {end}")
    return out


def varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


@functools.cache
def host_cpu() -> str:
    """This machine's architecture and CPU feature flags (Linux), for cache keys."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags.strip()}"
