"""DLPack export of raw device memory (a pointer, a shape, a dtype), so arrays that cuda-python allocated
(cuda.DeviceArray) pass to torch, CuPy, JAX or numpy without a copy: `torch.from_dlpack(x)`.

The DLPack 0.x ABI (dlpack.h, also what DLPack 1.x consumers accept as the legacy "dltensor" capsule):

    DLDevice        {int32 device_type; int32 device_id}          kDLCPU = 1, kDLCUDA = 2
    DLDataType      {uint8 code; uint8 bits; uint16 lanes}        code: int 0, uint 1, float 2, bool 6
    DLTensor        {void *data; DLDevice device; int32 ndim; DLDataType dtype;
                     int64 *shape; int64 *strides (NULL: compact row-major); uint64 byte_offset}
    DLManagedTensor {DLTensor dl_tensor; void *manager_ctx; void (*deleter)(DLManagedTensor *)}

A PyCapsule named "dltensor" carries the DLManagedTensor. The consumer renames it "used_dltensor" and
calls the deleter when it lets go; a capsule never consumed is deleted by its own destructor. Until
the deleter runs, the exporting Python object (which owns the memory) is kept alive here.
"""
from __future__ import annotations

import ctypes

import numpy as np

KDL_CPU, KDL_CUDA = 1, 2
_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]

_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_api = ctypes.pythonapi
_api.PyCapsule_New.restype, _api.PyCapsule_New.argtypes = ctypes.py_object, [
    ctypes.c_void_p, ctypes.c_char_p, _CapsuleDestructor]
_api.PyCapsule_IsValid.restype, _api.PyCapsule_IsValid.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype, _api.PyCapsule_GetPointer.argtypes = ctypes.c_void_p, [
    ctypes.py_object, ctypes.c_char_p]

_NAME = b"dltensor"
_live: dict[int, tuple] = {}  # address of a DLManagedTensor -> (it, its shape array, the owner): kept alive


@_Deleter
def _delete(managed) -> None:
    try:
        _live.pop(ctypes.addressof(managed.contents), None)
    except Exception:  # interpreter shutdown: nothing left to release
        pass


@_CapsuleDestructor
def _destroy_capsule(capsule: int) -> None:
    """A capsule never consumed (still named "dltensor") frees its tensor; a consumed one is the consumer's."""
    try:
        cap = ctypes.cast(capsule, ctypes.py_object)
        if _api.PyCapsule_IsValid(cap, _NAME):
            address = _api.PyCapsule_GetPointer(cap, _NAME)
            _delete(ctypes.cast(address, ctypes.POINTER(DLManagedTensor)))
    except Exception:  # interpreter shutdown
        pass


# A consumer may call the deleter, or drop an unconsumed capsule, while the interpreter tears this module
# down: keep the registry and both C callbacks alive for the life of the process.
for _immortal in (_live, _delete, _destroy_capsule):
    _api.Py_IncRef(ctypes.py_object(_immortal))


def dl_dtype(dtype) -> DLDataType:
    dtype = np.dtype(dtype)
    if dtype.kind not in _CODES:
        raise TypeError(f"no DLPack type for {dtype}")
    return DLDataType(_CODES[dtype.kind], dtype.itemsize * 8, 1)


def to_dlpack(ptr: int, shape: tuple, dtype, device: tuple[int, int], owner) -> object:
    """A "dltensor" capsule over `ptr` (compact row-major, `shape`, `dtype`) on device (type, id);
    `owner` is kept alive until the consumer deletes the tensor."""
    shape_arr = (ctypes.c_int64 * max(len(shape), 1))(*shape)
    managed = DLManagedTensor()
    managed.dl_tensor = DLTensor(ctypes.c_void_p(ptr), DLDevice(*device), len(shape), dl_dtype(dtype),
                                 ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64)), None, 0)
    managed.manager_ctx, managed.deleter = None, _delete
    _live[ctypes.addressof(managed)] = (managed, shape_arr, owner)
    return _api.PyCapsule_New(ctypes.addressof(managed), _NAME, _destroy_capsule)


def live_exports() -> int:
    """How many exported tensors no consumer has let go of yet (tests: nothing leaks)."""
    return len(_live)
