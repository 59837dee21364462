"""Devices for the TensorRT backend: where buffers live, how they are copied, and how a stream's work is
captured as a CUDA graph; which GPU this is. Imports neither torch nor CUDA at module level.

One small interface, `Device`, three implementations:
    TorchCuda     torch CUDA tensors, torch.cuda.CUDAGraph, a stream of its own inside `scope()` (torch's
                  current one otherwise). Chosen whenever torch with CUDA imports, so buffers pass
                  zero-copy between TensorRT engines and a torch step.
    CudaRuntime   cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`): cudaMalloc'd
                  DeviceArrays, one non-blocking stream, cudaStreamBeginCapture / cudaGraphLaunch.
    HostArrays    numpy arrays standing in for device memory; `capture` records the function and `replay`
                  calls it. Runs the step graphs' bookkeeping (step_graphs.py) on a CPU (tests), never
                  the engines.

Contexts. torch and the CUDA runtime API (cuda-python's `runtime`/`cudart`) both work in the device's
*primary* context, so their buffers, streams and graphs mix freely in one process. pycuda does not
use it by default: `import pycuda.autoinit` creates a second context, whose pointers torch and
TensorRT (which runs in the current context) must never see. With pycuda, retain the primary context
instead (`pycuda.driver.Device(i).retain_primary_context().push()`, before anything else touches the
GPU) or, simpler, use cuda-python. This module never uses pycuda.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError


@dataclass(eq=False)
class DeviceArray:
    """A contiguous row-major array in device memory (CudaRuntime). `base` owns the allocation.

    Hands itself to other libraries without a copy: DLPack (`torch.from_dlpack(x)`, `cupy.from_dlpack`,
    `jax.dlpack.from_dlpack`) and `__cuda_array_interface__` (CuPy, Numba, `torch.as_tensor`). Both first
    wait for the work queued on the allocating stream, so the consumer may read it from any stream."""

    ptr: int
    shape: tuple
    dtype: np.dtype
    base: object = None
    dl_device: tuple = (2, 0)  # DLPack (device type, id): kDLCUDA = 2, kDLCPU = 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def rows(self, n: int) -> "DeviceArray":
        """The first n rows (axis 0): same address, smaller shape."""
        return DeviceArray(self.ptr, (n, *self.shape[1:]), self.dtype, self if self.base is None else self.base,
                           self.dl_device)

    def _ready(self) -> None:
        """Waits for the allocating stream (the producer's side of DLPack's stream contract) and marks the
        allocation as exported: its free then waits for the whole device, since the consumer's queued
        work on its own streams may still read it after the consumer let go on the host."""
        if not np.dtype(self.dtype).isnative:
            raise BufferError(f"DeviceArray of non-native byte order {np.dtype(self.dtype).str} cannot be exported")
        owner = self.base.base if isinstance(self.base, DeviceArray) else self.base
        if isinstance(owner, _Allocation):
            owner.exported = True
            owner.device.synchronize()

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        from .dlpack import to_dlpack

        if copy:
            raise BufferError("DeviceArray exports without copying only (copy=True asked)")
        if dl_device is not None and tuple(dl_device) != tuple(self.dl_device):
            raise BufferError(f"DeviceArray lives on DLPack device {self.dl_device}, asked for {tuple(dl_device)}")
        self._ready()
        return to_dlpack(self.ptr, self.shape, self.dtype, self.dl_device, self)

    def __dlpack_device__(self) -> tuple[int, int]:
        return tuple(self.dl_device)

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.dl_device[0] != 2:
            raise AttributeError("__cuda_array_interface__: this array is not in CUDA memory")
        self._ready()
        return {"shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str, "data": (self.ptr, False),
                "strides": None, "version": 3}


class HostArrays:
    """numpy as a pretend device, for the CPU tests of everything around the engines."""

    name = "host"

    def __init__(self):
        self.captures = 0

    def empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    def free_bytes(self) -> int | None:
        """Free device memory (bytes); the host's MemAvailable for this pretend device."""
        from ..memory import available_host_bytes

        return available_host_bytes()

    def ptr(self, x) -> int:
        return x.__array_interface__["data"][0]

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def rows(self, x, n: int):
        return x[:n]

    def upload(self, dst, host) -> None:
        dst[...] = host

    def copy(self, dst, src) -> None:
        dst[...] = src

    def clone(self, x):
        return x.copy()

    def to_host(self, x) -> np.ndarray:
        return np.array(x)

    def all_finite(self, xs) -> bool:
        return all(np.isfinite(x).all() for x in xs)

    def stream_handle(self) -> int:
        return 0

    def scope(self):
        return nullcontext()

    def synchronize(self) -> None:
        pass

    def capture(self, fn, warmup: int = 0):
        for _ in range(warmup):
            fn()
        self.captures += 1
        return _Recorded(fn)


@dataclass
class _Recorded:
    fn: object

    def replay(self) -> None:
        self.fn()


class TorchCuda:
    """torch CUDA tensors on one device; work goes to torch's current stream (also inside a capture)."""

    name = "torch"

    def __init__(self, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendError("torch sees no CUDA device (CPU-only build, or no driver): the TensorRT backend "
                               "needs an NVIDIA GPU")
        self.torch = torch
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.dtypes = {np.dtype(k): v for k, v in (("float32", torch.float32), ("float16", torch.float16),
                                                   ("int64", torch.int64), ("int32", torch.int32),
                                                   ("bool", torch.bool), ("uint8", torch.uint8))}

    def empty(self, shape, dtype):
        return self.torch.zeros(tuple(shape), dtype=self.dtypes[np.dtype(dtype)], device=self.device)

    def free_bytes(self) -> int | None:
        """Free device memory now (cudaMemGetInfo), bytes."""
        return int(self.torch.cuda.mem_get_info(self.device)[0])

    def ptr(self, x) -> int:
        return x.data_ptr()

    def owns(self, x) -> bool:
        return isinstance(x, self.torch.Tensor) and x.device.type == "cuda"

    def rows(self, x, n: int):
        return x[:n]

    def upload(self, dst, host) -> None:
        dst.copy_(self.torch.from_numpy(np.ascontiguousarray(host)))

    def copy(self, dst, src) -> None:
        dst.copy_(src)

    def clone(self, x):
        return x.clone()

    def to_host(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def all_finite(self, xs) -> bool:
        t = self.torch
        return bool(t.stack([t.isfinite(x).all() for x in xs]).all().item())

    def stream_handle(self) -> int:
        return self.torch.cuda.current_stream(self.device).cuda_stream

    @contextmanager
    def scope(self):
        """Runs the block on this device's own stream, ordered after (and before) the caller's work.

        TensorRT synchronises when it is given the legacy default stream (torch's default), so enqueues
        go to a stream of our own. Entering waits for all earlier work of the caller's stream, so memory
        that the caching allocator hands out again inside the block is never still in use there."""
        torch = self.torch
        caller = torch.cuda.current_stream(self.device)
        if caller.cuda_stream != 0:  # already on a stream of its own (or capturing): stay there
            yield
            return
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def capture(self, fn, warmup: int = 1):
        """Warm-up on a side stream (torch's rule for autograd and lazy initialisation), then capture."""
        torch = self.torch
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6) or `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise BackendError("neither torch with CUDA nor cuda-python is importable: the TensorRT backend needs "
                               "one of them for device memory (`pip install 'tr0n-rt[gpu]'` brings cuda-python)") \
                from None
    return runtime


class CudaRuntime:
    """cuda-python buffers and graphs in the primary context, on one non-blocking stream."""

    name = "cuda-python"

    def __init__(self, device_id: int = 0):
        self.rt = rt = import_cudart()
        self.device_id = device_id
        self._call(rt.cudaSetDevice(device_id))
        self.stream = self._call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))

    def _call(self, result):
        """cuda-python returns (error, *values); raise on error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorString(err)[1]
            raise BackendError(f"CUDA runtime error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
        return values[0] if len(values) == 1 else tuple(values) or None

    def free_bytes(self) -> int | None:
        """Free device memory now (cudaMemGetInfo), bytes."""
        free, _ = self._call(self.rt.cudaMemGetInfo())
        return int(free)

    def empty(self, shape, dtype):
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        nbytes = max(math.prod(shape) * dtype.itemsize, 1)
        ptr = int(self._call(self.rt.cudaMallocAsync(nbytes, self.stream)))
        self._call(self.rt.cudaMemsetAsync(ptr, 0, nbytes, self.stream))
        return DeviceArray(ptr, shape, dtype, _Allocation(self, ptr), (2, self.device_id))

    def ptr(self, x) -> int:
        return x.ptr

    def owns(self, x) -> bool:
        return isinstance(x, DeviceArray)

    def rows(self, x, n: int):
        return x.rows(n)

    def upload(self, dst, host) -> None:
        # From pageable memory the call returns once `host` is staged, so `host` may be freed after it.
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        self._memcpy(dst.ptr, host.ctypes.data, host.nbytes, "cudaMemcpyHostToDevice", dst)

    def copy(self, dst, src) -> None:
        self._memcpy(dst.ptr, src.ptr, src.nbytes, "cudaMemcpyDeviceToDevice", dst)

    def _memcpy(self, dst_ptr, src_ptr, nbytes, kind, dst) -> None:
        if nbytes > dst.nbytes:
            raise BackendError(f"copy of {nbytes} bytes into a buffer of {dst.nbytes}")
        self._call(self.rt.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, getattr(self.rt.cudaMemcpyKind, kind),
                                           self.stream))

    def clone(self, x):
        out = self.empty(x.shape, x.dtype)
        self.copy(out, x)
        return out

    def to_host(self, x) -> np.ndarray:
        out = np.empty(x.shape, x.dtype)
        self._call(self.rt.cudaMemcpyAsync(out.ctypes.data, x.ptr, x.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.synchronize()
        return out

    def all_finite(self, xs) -> bool:
        # No kernels of our own here: the arrays come to the host (a step's state is at most a few MB).
        return all(np.isfinite(self.to_host(x)).all() for x in xs)

    def stream_handle(self) -> int:
        return int(self.stream)

    def scope(self):
        return nullcontext()  # everything already runs on this device's own stream

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream))

    def capture(self, fn, warmup: int = 1):
        rt = self.rt
        for _ in range(warmup):
            fn()
        self.synchronize()
        self._call(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            fn()
        finally:
            graph = self._call(rt.cudaStreamEndCapture(self.stream))
        return _RuntimeGraph(self, graph, self._call(rt.cudaGraphInstantiate(graph, 0)))


class _Allocation:
    def __init__(self, device: CudaRuntime, ptr: int):
        self.device, self.ptr, self.exported = device, ptr, False

    def __del__(self):
        try:
            if self.exported:  # handed out through DLPack / __cuda_array_interface__: see DeviceArray._ready
                self.device.rt.cudaDeviceSynchronize()
            self.device.rt.cudaFreeAsync(self.ptr, self.device.stream)
        except Exception:  # interpreter shutdown: the driver frees everything anyway
            pass


@dataclass
class _RuntimeGraph:
    device: CudaRuntime
    graph: object
    exec: object

    def replay(self) -> None:
        self.device._call(self.device.rt.cudaGraphLaunch(self.exec, self.device.stream))

    def __del__(self):
        try:
            self.device.rt.cudaGraphExecDestroy(self.exec)
            self.device.rt.cudaGraphDestroy(self.graph)
        except Exception:
            pass


def put(device, dst, x) -> None:
    """Copies x (a buffer of `device`, or host data) into dst, unless x already is dst."""
    if device.owns(x):
        if device.ptr(x) != device.ptr(dst) or tuple(x.shape) != tuple(dst.shape):
            device.copy(dst, x)
    else:
        device.upload(dst, np.asarray(x))


def open_device(kind: str = "auto", device_id: int = 0):
    """auto: TorchCuda when torch sees CUDA, else CudaRuntime; or name one: torch | cuda-python | host."""
    if kind == "host":
        return HostArrays()
    if kind in ("auto", "torch"):
        try:
            import torch

            if torch.cuda.is_available():
                return TorchCuda(f"cuda:{device_id}")
        except ImportError:
            pass
        if kind == "torch":
            raise BackendError("device 'torch' asked for, but torch with CUDA is not importable")
    if kind in ("auto", "cuda-python"):
        return CudaRuntime(device_id)
    raise BackendError(f"unknown device kind {kind!r}; use auto, torch, cuda-python or host")


def current_gpu(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability as sm_XY) from torch if it sees CUDA, else cuda-python."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(device_id)
            return p.name, f"sm_{p.major}{p.minor}"
    except ImportError:
        pass
    rt = import_cudart()
    err, prop = rt.cudaGetDeviceProperties(device_id)
    if int(err) != 0:
        raise BackendError(f"no CUDA device {device_id} (CUDA runtime error {int(err)}): TensorRT needs an NVIDIA GPU")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00"), f"sm_{prop.major}{prop.minor}"
