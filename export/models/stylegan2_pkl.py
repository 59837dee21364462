"""Loads NVIDIA's official StyleGAN2 pickles into `StyleGAN2Generator`, without running any code from the file.

NVIDIA's tools (stylegan2-ada-pytorch, stylegan3) write `network-snapshot-*.pkl` and the published PyTorch
`stylegan2-*.pkl` with plain `pickle.dump` of {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}.
Each network is a `torch_utils.persistence` object: the pickle calls
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type: "class", version, module_src (the
Python source of the defining module, which NVIDIA's loader exec()s), class_name, state (the module's __dict__:
_parameters, _buffers, _modules and plain attributes such as z_dim or weight_gain)}. Tensors come as
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` / `_rebuild_parameter(tensor, ...)`, each
storage as `torch.storage._load_from_bytes(bytes)`, bytes being a legacy torch.save of the storage (torch's own
`_load_from_bytes` reads them with weights_only=False, so we never call it).

`_WeightsUnpickler` resolves only an allow-list of globals, each to a function of ours:
  _reconstruct_persistent_obj -> NvidiaObject(class_name, state): module_src is dropped unread, never compiled
  _load_from_bytes            -> torch.load(weights_only=True) of the bytes, which must hold one storage
  _rebuild_tensor_v2 / _rebuild_parameter(_with_state) -> a plain tensor, bounds-checked against its storage
  collections.OrderedDict, builtins.set / frozenset, dnnlib.util.EasyDict (-> a dict), numeric numpy scalars
  (-> Python numbers) and arrays (StyleGAN3 keeps some), _codecs.encode(str, "latin1") (protocol-2 bytes).
Any other global (os.system, builtins.eval, training.networks.*, ...) raises CheckpointError naming it.
Memory is bounded before it is allocated: a storage record may not declare more bytes than it holds (checked
on its header, before torch.load allocates the declared size), and the storages, tensors and numpy arrays one
file rebuilds may not add up to more than 2 x its size + 16 MiB (a genuine file's tensors are views of storages
held in it: a 1 KB file cannot declare a stride-0 tensor of 1.4 GB). G_ema may hold at most 10,000 modules, and
a module attribute at most 100,000 values 32 deep (memo references can share one record or list everywhere).

Names: ours are NVIDIA's (see the `stylegan2` module table), so the key map is the identity; NVIDIA's fixed FIR
buffers (`*.resample_filter`, checked to be [1, 3, 3, 1]) and `mapping.w_avg` (truncation only) are dropped.
Arithmetic (checked from the pickled attributes, and in tests against a restatement of NVIDIA's forward):
    NVIDIA (training/networks.py)                           ours (stylegan2.py)
    FullyConnectedLayer: W * lr/sqrt(in), b * lr            EqualLinear(lr_mul=lr): same; mapping lr 0.01
    affine: FullyConnectedLayer(bias_init=1), lr 1          EqualLinear(bias_init=1)
    SynthesisLayer: demodulate(W * s), no weight gain       demodulate(W / sqrt(I k k) * s): 1e-8 moves only
    conv0: conv_transpose stride 2 + FIR pad 1, gain 4      same
    noise_const * noise_strength, + bias, lrelu * sqrt 2    same (noise="const" = NVIDIA noise_mode="const")
    ToRGBLayer: styles / sqrt(I), no demodulation, + bias   W / sqrt(I): same
    bias_act clamp: SynthesisLayer conv_clamp * gain (gain   conv_clamp: SynthesisLayer and ToRGB outputs
      1 in "skip"), ToRGBLayer conv_clamp, after the gain   clamped to +-conv_clamp after bias, lrelu and gain
    skip: img = upsample2d(img) (pad 2, 1, gain 4) + rgb    same (the sum itself is not clamped)
conv_clamp (256 in ADA-trained snapshots, None in converted config-f pickles) is read from the SynthesisLayer /
ToRGBLayer attributes (one value for all of them, else CheckpointError) and passed to StyleGAN2Generator, so
imported snapshots clamp exactly where NVIDIA's do. num_fp16_res is run-time only (fp16 is not reproduced).
Refused: conditional generators (c_dim > 0), architecture "orig" / "resnet", img_channels != 3, other filters
or activations, StyleGAN3 generators (configs t / r), TensorFlow-era pickles, torch.save zip archives.

    load_nvidia_pkl(path, network="G_ema") -> {"class_name", "classes", "attributes", "state_dict"}
    import_nvidia_pkl(path_or_record, resolution=None, **config) -> StyleGAN2Generator (eval, no grad)
    from_nvidia(state, resolution, mapping_layers, noise="const") -> our state dict
    to_nvidia(state, resolution, mapping_layers, w_avg=None) -> NVIDIA's G state dict (the inverse)
    infer_config(record) -> StyleGAN2Generator kwargs (conv_clamp included when the file sets one)
"""
from __future__ import annotations

import functools
import io
import math
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tr0n_rt.errors import CheckpointError

from ..checkpoints import load_fitting
from .stylegan2 import StyleGAN2Generator, fir_kernel
from .stylegan2_import import configured_generator, key_table

# ---- stand-ins the unpickler hands out instead of NVIDIA's and torch's code ---------------------------------


@dataclass
class NvidiaObject:
    """What `_reconstruct_persistent_obj(meta)` yields here: the class name and its __dict__, never the class."""
    class_name: str
    state: dict


class EasyDict(dict):
    """dnnlib.util.EasyDict is a dict with attribute access; only its items matter."""


def _persistent_object(meta) -> NvidiaObject:
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise CheckpointError("torch_utils.persistence record without type 'class', class_name and state")
    return NvidiaObject(meta["class_name"], dict(meta["state"]))  # meta["module_src"] is never looked at


class _Budget:
    """Bytes a pickle may still have rebuilt (storages, tensors, numpy arrays), charged before each allocation."""

    SLACK = 16 << 20  # for expanded (stride-0) buffers and small records; a 1 KB file gets no more than this

    def __init__(self, file_bytes: int):
        self.left = 2 * file_bytes + self.SLACK

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise CheckpointError(f"{what} would need {_size(nbytes)}, more than a pickle of this size can hold "
                                  "(its storages, tensors and arrays may add up to 2 x the file size + 16 MiB); "
                                  "the file is corrupt or hostile, not a genuine NVIDIA network pickle")
        self.left -= nbytes


def _size(nbytes: int) -> str:
    return f"{nbytes:,} bytes"[:100]


_STORAGE_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
                     "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                     "BoolStorage": 1, "UntypedStorage": 1}
_NOT_A_STORAGE = ("a tensor storage record holds objects other than a storage (refused by torch.load("
                  "weights_only=True)); this is not a genuine NVIDIA pickle")


class _StorageHeader(pickle.Unpickler):
    """Reads a legacy torch.save storage record up to its data, keeping the storages it declares; no globals but
    torch's storage types, so nothing is allocated beyond the header's own objects."""

    def __init__(self, file):
        super().__init__(file)
        self.declared = []

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_ITEMSIZE:
            return name
        raise CheckpointError(_NOT_A_STORAGE)

    def persistent_load(self, pid):
        self.declared.append(pid)


def _check_storage_header(data: bytes) -> None:
    """Refuses a storage record whose declared storages need more bytes than the record holds, before
    torch.load allocates what it declares (torch allocates first, then finds the data short)."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    header = _StorageHeader(io.BytesIO(data))
    try:
        if header.load() != MAGIC_NUMBER or header.load() != PROTOCOL_VERSION:
            raise CheckpointError("a tensor storage record is not a torch.save storage (wrong magic number)")
        header.load()  # sys_info
        header.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise CheckpointError("a tensor storage record is truncated or not a torch.save storage") from None
    roots = {}
    for pid in header.declared:
        ok = isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage") \
            and isinstance(pid[1], str) and pid[1] in _STORAGE_ITEMSIZE and type(pid[4]) is int and pid[4] >= 0
        if not ok:
            raise CheckpointError(f"malformed storage id in a tensor storage record: {str(pid)[:100]}")
        roots[str(pid[2])] = pid[4] * _STORAGE_ITEMSIZE[pid[1]]
    declared = sum(roots.values())
    if declared > len(data):
        raise CheckpointError(f"a tensor storage record declares {_size(declared)} of data but holds "
                              f"{len(data):,} bytes; the file is corrupt or hostile, not a genuine NVIDIA pickle")


def _storage_from_bytes(data, budget: _Budget | None = None):
    if not isinstance(data, bytes):
        raise CheckpointError("torch.storage._load_from_bytes given something other than bytes")
    _check_storage_header(data)
    if budget is not None:
        budget.take(len(data), "a tensor storage")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(_NOT_A_STORAGE) from None
    if not isinstance(storage, torch.TypedStorage):
        raise CheckpointError(f"a storage record holds {type(storage).__name__}, not a typed storage")
    return storage


def _is_ints(xs) -> bool:
    return isinstance(xs, tuple | list) and all(type(x) is int and x >= 0 for x in xs)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None,
                    budget: _Budget | None = None):
    """A copy of storage[offset :: stride] with shape `size`; as_strided refuses views past the storage's end,
    and the copy's bytes are charged to the pickle's budget before it is made (a stride-0 view can be huge)."""
    if not isinstance(storage, torch.TypedStorage) or type(offset) is not int or not _is_ints(size) \
            or not _is_ints(stride) or len(size) != len(stride) or hooks or metadata:
        raise CheckpointError("malformed tensor record (storage, offset, size, stride; no hooks or metadata)")
    if budget is not None:
        budget.take(math.prod(size) * storage.dtype.itemsize, f"a tensor of shape {str(list(size))[:100]}")
    base = torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage)
    return base.as_strided(tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, torch.Tensor) or hooks:
        raise CheckpointError("malformed parameter record")
    return data


_NUMPY_TYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _NumpyDType:
    """numpy.dtype(name, align, copy) + BUILD (version, byteorder, ...), for numeric scalar types only."""

    def __init__(self, name, align=False, copy=True):
        if name not in _NUMPY_TYPES:
            raise CheckpointError(f"numpy dtype {name!r} is not a plain number type")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=b""):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise CheckpointError("malformed numpy scalar record")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


def _numpy_frombuffer(buf, dtype, shape, order="C", budget: _Budget | None = None):
    if not isinstance(buf, bytes | bytearray) or not isinstance(dtype, _NumpyDType) or not _is_ints(shape) \
            or order not in ("C", "F"):
        raise CheckpointError("malformed numpy array record")
    if budget is not None:
        budget.take(2 * len(buf), "a numpy array")
    return np.frombuffer(bytes(buf), dtype=dtype.dtype).reshape(shape, order=order).copy()


_NDARRAY = object()  # what numpy.ndarray resolves to: only a marker for _reconstruct's first argument


class _NumpyArray:
    """numpy's ndarray pickle: _reconstruct(ndarray, (0,), b"b"), then BUILD (version, shape, dtype, fortran, raw)."""

    def __init__(self, cls=None, shape=(0,), code=b"b", budget: _Budget | None = None):
        if cls is not _NDARRAY:
            raise CheckpointError("numpy _reconstruct of something other than numpy.ndarray")
        self.value, self.budget = None, budget

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("malformed numpy array record")
        _, shape, dtype, fortran, raw = state
        self.value = _numpy_frombuffer(raw, dtype, shape, "F" if fortran else "C", budget=self.budget)


def _latin1(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("_codecs.encode is allowed only to turn protocol-2 strings into bytes")
    return text.encode("latin1")


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 names
    ("__builtin__", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _NumpyArray,
    ("numpy._core.multiarray", "_reconstruct"): _NumpyArray,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("_codecs", "encode"): _latin1,
}


_CHARGED = (_storage_from_bytes, _rebuild_tensor, _numpy_frombuffer, _NumpyArray)  # take a budget= keyword


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles NVIDIA's network pickles into stand-ins; any global off the allow-list raises CheckpointError.
    What allocates (storages, tensors, numpy arrays) is charged to `budget` before allocating."""

    def __init__(self, file, budget: _Budget):
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            fn = _ALLOWED[module, name]
            return functools.partial(fn, budget=self.budget) if fn in _CHARGED else fn
        if module.startswith("dnnlib.tflib"):
            raise CheckpointError(f"this is a TensorFlow-era StyleGAN pickle ({module}.{name}); convert it to "
                                  "PyTorch with NVIDIA's stylegan2-ada-pytorch legacy.py first")
        raise CheckpointError(f"the pickle asks for {module}.{name}, which is not weights data; only tensors and "
                              "plain containers are read from NVIDIA pickles (code in the file is never run). If a "
                              "genuine NVIDIA pickle needs it and it is plain data, add it to _ALLOWED in "
                              "export/models/stylegan2_pkl.py")

    def persistent_load(self, pid):
        raise CheckpointError("the pickle uses persistent ids (a torch.save archive?), which NVIDIA pickles do not")


def read_nvidia_pickle(path) -> object:
    """The whole pickle with networks as NvidiaObject and tensors as plain tensors. Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise CheckpointError(f"{path} is a torch.save zip archive, not an NVIDIA network pickle "
                                  "(pickle.dump of G, D, G_ema); for state dicts use tr0n_rt.export.checkpoints")
        f.seek(0)
        try:
            return _WeightsUnpickler(f, _Budget(path.stat().st_size)).load()
        except CheckpointError as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
        except Exception as e:  # noqa: BLE001 -- truncated, corrupt, not a pickle, or a storage torch refuses
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {msg}; the file is corrupt, truncated, "
                                  "or not an NVIDIA network pickle (code in a pickle is never run)") from None


# ---- the G_ema record --------------------------------------------------------------------------------------


MAX_ATTRIBUTE_ITEMS = 100_000  # values in one module attribute (NVIDIA's are numbers, strings and short lists)


def _plain(v, where: str) -> bool:
    """Whether v is plain data (numbers, strings, None, and lists, tuples and str-keyed dicts of them). Walked
    without recursion and at most MAX_ATTRIBUTE_ITEMS values 32 deep: a crafted pickle can share one list at
    every level (2^n values from n memo references) or nest lists thousands deep."""
    stack, seen = [(v, 0)], 0
    while stack:
        x, depth = stack.pop()
        seen += 1
        if seen > MAX_ATTRIBUTE_ITEMS or depth > 32:
            raise CheckpointError(f"attribute {where[:100]} holds more than {MAX_ATTRIBUTE_ITEMS:,} values or nests "
                                  "deeper than 32; the file is corrupt or hostile, not a genuine NVIDIA network pickle")
        if isinstance(x, bool | int | float | str | type(None)):
            continue
        if isinstance(x, tuple | list):
            stack.extend((y, depth + 1) for y in x)
        elif isinstance(x, dict) and all(isinstance(k, str) for k in x):
            stack.extend((y, depth + 1) for y in x.values())
        else:
            return False
    return True


MAX_MODULES = 10_000


def flatten(obj: NvidiaObject) -> dict:
    """{"class_name", "classes": {path: class}, "attributes": {path: {name: plain value}},
    "state_dict": {path.name: tensor}} for a persistent network; paths as in nn.Module.state_dict()."""
    classes, attributes, tensors = {}, {}, {}

    def walk(o, prefix):
        if not isinstance(o, NvidiaObject):
            raise CheckpointError(f"module {prefix or '(top)'} is {type(o).__name__}, not a persistent NVIDIA module")
        if prefix.count(".") > 16:  # StyleGAN2 nests 4 deep; this also ends a cycle a crafted pickle could build
            raise CheckpointError(f"modules nested deeper than 16 levels at {prefix[:200]}...")
        if len(classes) >= MAX_MODULES:  # a crafted pickle can share one module many times at every level
            raise CheckpointError(f"more than {MAX_MODULES:,} modules (a StyleGAN2 generator has about 100); the "
                                  "file is corrupt or hostile, not a genuine NVIDIA network pickle")
        path = prefix[:-1]
        classes[path] = o.class_name
        attributes[path] = {k: v for k, v in o.state.items()
                            if isinstance(k, str) and not k.startswith("_") and _plain(v, f"{prefix}{k}")}
        for group in ("_parameters", "_buffers", "_modules"):
            items = o.state.get(group) or {}
            if not isinstance(items, dict) or not all(isinstance(k, str) for k in items):
                raise CheckpointError(f"module {prefix or '(top)'}: {group} is not a dict keyed by name")
            for k, v in items.items():
                if group == "_modules" and v is not None:
                    walk(v, f"{prefix}{k}.")
                elif group != "_modules" and v is not None:
                    if not isinstance(v, torch.Tensor):
                        raise CheckpointError(f"{prefix}{k} is {type(v).__name__}, not a tensor")
                    tensors[prefix + k] = v

    walk(obj, "")
    return {"class_name": obj.class_name, "classes": classes, "attributes": attributes, "state_dict": tensors}


def load_nvidia_pkl(path, network: str = "G_ema") -> dict:
    """`network` ("G_ema", or "G") of an NVIDIA pickle as a record (see `flatten`), never running its code."""
    data = read_nvidia_pickle(path)
    if not isinstance(data, dict) or network not in data:
        found = f"keys {str(sorted(map(str, data)))[:100]}" if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not an NVIDIA network pickle with {network!r} (found {found}); give a "
                              "network-snapshot-*.pkl or stylegan2-*.pkl written by stylegan2-ada-pytorch / stylegan3")
    net = data[network]
    if not isinstance(net, NvidiaObject):
        what = f"a tensor of shape {list(net.shape)}" if isinstance(net, torch.Tensor) else f"a {type(net).__name__}"
        raise CheckpointError(f"{path}: {network!r} is {what[:100]}, not a network saved by NVIDIA's "
                              "torch_utils.persistence; the file is not a genuine NVIDIA network pickle")
    return flatten(net)


# ---- layout checks and config -----------------------------------------------------------------------------

_CLASSES = [(r"", "Generator"), (r"mapping", "MappingNetwork"), (r"mapping\.fc\d+", "FullyConnectedLayer"),
            (r"synthesis", "SynthesisNetwork"), (r"synthesis\.b\d+", "SynthesisBlock"),
            (r"synthesis\.b\d+\.conv[01]", "SynthesisLayer"), (r"synthesis\.b\d+\.torgb", "ToRGBLayer"),
            (r"synthesis\.b\d+\.(conv[01]|torgb)\.affine", "FullyConnectedLayer")]


def check_layout(record: dict) -> float:
    """Raises CheckpointError unless the record is a StyleGAN2 config-e/f generator ours reproduces (classes,
    architecture, activations, gains, one conv_clamp); returns the mapping lr multiplier."""
    classes, attrs, sd = record["classes"], record["attributes"], record["state_dict"]
    if "synthesis.input" in classes or any(c == "SynthesisInput" for c in classes.values()):
        raise CheckpointError("this is a StyleGAN3 generator (config t or r); only StyleGAN2 generators are supported")
    problems = [f"{p or '(top)'} is {c}" for p, c in classes.items()
                if not any(re.fullmatch(rx, p) and c == want for rx, want in _CLASSES)]

    def expect(path, name, want, close=False):
        got = attrs.get(path, {}).get(name, want)
        if close:
            same = isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-5)
        else:
            same = got == want
        if not same:
            problems.append(f"{path or '(top)'}.{name} = {repr(got)[:100]} (supported: {want!r})")

    expect("", "c_dim", 0)
    expect("", "img_channels", 3)
    fcs = sorted(p for p in classes if re.fullmatch(r"mapping\.fc\d+", p))
    lr_mul = attrs.get(fcs[0], {}).get("bias_gain", 0.01) if fcs else 0.01
    for p in fcs:
        expect(p, "activation", "lrelu")
        expect(p, "bias_gain", lr_mul, close=True)
        if f"{p}.weight" in sd:
            expect(p, "weight_gain", lr_mul / math.sqrt(sd[f"{p}.weight"].shape[1]), close=True)
    for p, c in classes.items():
        weight = sd.get(f"{p}.weight")
        if p.endswith(".affine"):
            expect(p, "activation", "linear")
            expect(p, "bias_gain", 1.0, close=True)
            if weight is not None:
                expect(p, "weight_gain", 1 / math.sqrt(weight.shape[1]), close=True)
        elif c == "SynthesisLayer":
            expect(p, "activation", "lrelu")
            expect(p, "up", 2 if p.endswith("conv0") else 1)
        elif c == "ToRGBLayer" and weight is not None and weight.ndim == 4:
            expect(p, "weight_gain", 1 / math.sqrt(weight[0].numel()), close=True)
        elif c == "SynthesisBlock":
            expect(p, "architecture", "skip")
    clamps = _conv_clamps(record)
    bad = {p: v for p, v in clamps.items()
           if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v > 0
                                 or not math.isfinite(v))}
    problems += [f"{p}.conv_clamp = {v!r} (supported: None or a positive number)" for p, v in bad.items()]
    if not bad and len(set(clamps.values())) > 1:
        problems.append("conv_clamp differs between layers (" + ", ".join(
            f"{p}: {v!r}" for p, v in list(clamps.items())[:4]) + "); StyleGAN2Generator has one conv_clamp")
    if problems:
        raise CheckpointError(f"NVIDIA generator layout not supported by StyleGAN2Generator: {'; '.join(problems[:8])}"
                              f"{' ...' if len(problems) > 8 else ''}")
    return float(lr_mul)


def _conv_clamps(record: dict) -> dict:
    """{path: conv_clamp} of every SynthesisLayer and ToRGBLayer (None where the attribute is absent or None)."""
    return {p: record["attributes"].get(p, {}).get("conv_clamp") for p, c in sorted(record["classes"].items())
            if c in ("SynthesisLayer", "ToRGBLayer")}


def conv_clamp_of(record: dict) -> float | None:
    """The generator's conv_clamp (NVIDIA's SynthesisLayer / ToRGBLayer attribute), None when unset.
    Assumes check_layout passed (one value for all layers)."""
    values = set(_conv_clamps(record).values())
    clamp = values.pop() if len(values) == 1 else None
    return None if clamp is None else float(clamp)


def infer_config(record: dict) -> dict:
    """StyleGAN2Generator kwargs from a record: resolution and widths from shapes, mapping lr from the gains,
    noise "none" when the file has no noise inputs, conv_clamp (only when the file sets one) from the layers'
    attributes. Raises CheckpointError for layouts ours cannot run."""
    sd = record["state_dict"]
    res = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^synthesis\.b(\d+)\.", k))})
    fcs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"^mapping\.fc(\d+)\.weight$", k)))
    if not res or res != [2 ** k for k in range(2, len(res) + 2)] or fcs != list(range(len(fcs))) or not fcs:
        raise CheckpointError(f"NVIDIA generator blocks or mapping layers are not contiguous: blocks {res}, "
                              f"mapping fc {fcs} (expected b4, b8, ... and fc0, fc1, ...)")
    resolution = res[-1]
    needed = ["synthesis.b4.const", f"synthesis.b{resolution}.torgb.weight"]
    if any(k not in sd for k in needed):
        raise CheckpointError(f"missing: {', '.join(k for k in needed if k not in sd)}")
    w_dim, z_dim = sd["mapping.fc0.weight"].shape[0], sd["mapping.fc0.weight"].shape[1]
    channel_max = sd["synthesis.b4.const"].shape[0]
    c_last = sd[f"synthesis.b{resolution}.torgb.weight"].shape[1]
    cfg = {"resolution": resolution, "w_dim": int(w_dim), "z_dim": int(z_dim), "mapping_layers": len(fcs),
           "channel_max": int(channel_max), "channel_base": int(min(c_last, channel_max) * resolution),
           "mapping_lr_mul": check_layout(record),
           "noise": "const" if "synthesis.b4.conv1.noise_const" in sd else "none"}
    clamp = conv_clamp_of(record)
    if clamp is not None:
        cfg["conv_clamp"] = clamp
    return cfg


# ---- names -------------------------------------------------------------------------------------------------

_FIR = re.compile(r"^synthesis\.b\d+(\.conv[01])?\.resample_filter$")  # upfirdn2d.setup_filter([1, 3, 3, 1])
_DROPPED = "mapping.w_avg"  # the running mean of w, for truncation only


def _names(keys: list[str]) -> str:
    return f"{', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"


def from_nvidia(state: dict[str, torch.Tensor], resolution: int, mapping_layers: int,
                noise: str = "const") -> dict[str, torch.Tensor]:
    """NVIDIA G state dict -> ours (same names, FIR buffers and w_avg dropped; noise="none" drops the noise too).
    Raises CheckpointError naming every missing or unexpected NVIDIA key and any other FIR filter."""
    ours = [k for k, _, _ in key_table(resolution, mapping_layers, noise=True)]
    is_noise = re.compile(r"\.noise_(strength|const)$")
    use_noise = noise == "const"
    missing = [k for k in ours if k not in state and (use_noise or not is_noise.search(k))]
    unexpected = [k for k in state if k not in ours and k != _DROPPED and not _FIR.match(k)]
    if missing or unexpected:
        parts = [f"{n}: {_names(ks)}" for n, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
        raise CheckpointError(f"not an NVIDIA StyleGAN2 generator at {resolution}x{resolution} with "
                              f"{mapping_layers} mapping layers ({'; '.join(parts)})")
    fir = fir_kernel(gain=1.0)
    odd = [k for k in state if _FIR.match(k)
           and (state[k].shape != fir.shape or not torch.allclose(state[k].float(), fir, atol=1e-6))]
    if odd:
        raise CheckpointError(f"resample filters other than [1, 3, 3, 1] (not supported): {_names(odd)}")
    return {k: state[k] for k in ours if k in state and (use_noise or not is_noise.search(k))}


def to_nvidia(state: dict[str, torch.Tensor], resolution: int, mapping_layers: int,
              w_avg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Ours -> NVIDIA's G state dict (the inverse of from_nvidia): adds the FIR buffers and mapping.w_avg."""
    out = {k: state[k].clone() for k, _, _ in key_table(resolution, mapping_layers, noise=True) if k in state}
    w_dim = state["mapping.fc0.weight"].shape[0]
    out[_DROPPED] = torch.zeros(w_dim) if w_avg is None else w_avg.clone()
    for k in range(2, resolution.bit_length()):
        r = 2 ** k
        for layer in ([f"b{r}", f"b{r}.conv1"] + ([f"b{r}.conv0"] if r > 4 else [])):
            out[f"synthesis.{layer}.resample_filter"] = fir_kernel(gain=1.0)
    return out


def import_nvidia_pkl(path_or_record, resolution: int | None = None, network: str = "G_ema",
                      **config) -> StyleGAN2Generator:
    """A StyleGAN2Generator (eval, requires_grad off) holding an NVIDIA pickle's `network` (default G_ema).
    The config is inferred (see infer_config), including the pickled conv_clamp; `resolution` and `config`
    override it (e.g. noise="none", or conv_clamp=None to run without NVIDIA's clamp).
    Any missing, unexpected or misshapen key, or a layout ours does not reproduce, raises CheckpointError."""
    record = path_or_record if isinstance(path_or_record, dict) else load_nvidia_pkl(path_or_record, network)
    model, cfg = configured_generator(infer_config(record), resolution, config, "its synthesis blocks")
    ours = from_nvidia(record["state_dict"], cfg["resolution"], cfg["mapping_layers"], noise=cfg["noise"])
    load_fitting(model, ours, f"NVIDIA generator ({cfg})")
    return model.eval().requires_grad_(False)
