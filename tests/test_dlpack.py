"""DLPack export of cuda-python device arrays (backends/dlpack.py), checked on host memory: the same
structs and capsule with device type kDLCPU, consumed by numpy and torch."""
import gc

import numpy as np
import pytest

from tr0n_rt.backends.cuda import DeviceArray
from tr0n_rt.backends.dlpack import KDL_CPU, KDL_CUDA, live_exports


def host_array(x: np.ndarray) -> DeviceArray:
    """A DeviceArray over numpy memory, as CudaRuntime.empty makes them over cudaMalloc'd memory."""
    return DeviceArray(x.ctypes.data, x.shape, x.dtype, x, (KDL_CPU, 0))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8", "bool"])
def test_numpy_reads_the_same_memory(dtype):
    x = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    y = np.from_dlpack(host_array(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    x[1, 2, 3] = 0 if dtype == "bool" else 7
    assert y[1, 2, 3] == x[1, 2, 3]  # a view, not a copy


def test_torch_reads_the_same_memory_and_rows_are_views():
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = torch.from_dlpack(host_array(x).rows(2))
    assert tuple(t.shape) == (2, 4)
    x[1, 1] = -5
    assert t[1, 1].item() == -5 and t.data_ptr() == x.ctypes.data


def test_exports_are_released_by_consumers_and_unconsumed_capsules():
    before = live_exports()
    x = np.ones((4, 4), np.float32)
    y = np.from_dlpack(host_array(x))
    assert live_exports() == before + 1
    del y
    gc.collect()
    assert live_exports() == before
    capsule = host_array(x).__dlpack__()  # never consumed: its own destructor deletes the tensor
    assert live_exports() == before + 1
    del capsule
    gc.collect()
    assert live_exports() == before


def test_the_owner_outlives_the_array_object():
    x = np.arange(6, dtype=np.float32)
    arr = host_array(x)
    y = np.from_dlpack(arr)
    del arr, x
    gc.collect()
    np.testing.assert_array_equal(y, np.arange(6, dtype=np.float32))  # memory kept alive by the export


def test_copies_and_other_devices_are_refused():
    arr = host_array(np.zeros(3, np.float32))
    with pytest.raises(BufferError, match="without copying"):
        arr.__dlpack__(copy=True)
    with pytest.raises(BufferError, match=r"asked for \(2, 0\)"):
        arr.__dlpack__(dl_device=(KDL_CUDA, 0))
    assert arr.__dlpack_device__() == (KDL_CPU, 0)
    with pytest.raises(AttributeError, match="not in CUDA memory"):
        arr.__cuda_array_interface__
    with pytest.raises(TypeError, match="no DLPack type"):
        DeviceArray(0, (1,), np.dtype("complex64"), None, (KDL_CPU, 0)).__dlpack__()
    swapped = np.arange(3, dtype=">f4")  # DLPack has no byte order: exporting it would read garbage
    with pytest.raises(BufferError, match="non-native byte order"):
        host_array(swapped).__dlpack__()


def test_cuda_array_interface_describes_device_memory():
    arr = DeviceArray(0x7F00_0000_0000, (2, 3), np.dtype("float16"), None, (KDL_CUDA, 1))
    assert arr.__cuda_array_interface__ == {"shape": (2, 3), "typestr": "<f2", "data": (0x7F00_0000_0000, False),
                                            "strides": None, "version": 3}
    assert arr.rows(1).__dlpack_device__() == (KDL_CUDA, 1)


def test_cuda_python_arrays_reach_torch_without_a_copy():
    """On a GPU: a cudaMalloc'd DeviceArray read by torch through DLPack and __cuda_array_interface__."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available())")
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from tr0n_rt.backends.cuda import CudaRuntime

    dev = CudaRuntime(0)
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    arr = dev.empty(x.shape, x.dtype)
    dev.upload(arr, x)
    t = torch.from_dlpack(arr)
    assert t.device.type == "cuda" and t.data_ptr() == arr.ptr
    np.testing.assert_array_equal(t.cpu().numpy(), x)
    u = torch.as_tensor(arr.rows(2), device="cuda")
    assert u.data_ptr() == arr.ptr and tuple(u.shape) == (2, 6)
    t.mul_(2)  # writes through to the DeviceArray's memory
    torch.cuda.synchronize()
    np.testing.assert_array_equal(dev.to_host(arr), 2 * x)
