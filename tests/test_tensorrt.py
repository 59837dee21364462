"""TensorRT engines without TensorRT: profile planning, stamps, compatibility, the manifest update, the
step-path choice, and the whole backend over a stand-in TensorRT whose "engines" are ONNX Runtime
sessions on host arrays (so padding, profiles, bindings, ping-pong graphs and the FP16 guard run for
real). The tests at the end need TensorRT and a GPU, and skip without them."""
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from tests.test_backend_onnxruntime import random_conditions  # noqa: E402
from tr0n_rt import engine_stamp as stamp_mod  # noqa: E402
from tr0n_rt.backends import cuda as cuda_mod  # noqa: E402
from tr0n_rt.backends import tensorrt as trt_mod  # noqa: E402
from tr0n_rt.backends.cuda import HostArrays  # noqa: E402
from tr0n_rt.backends.onnxruntime import OrtBackend  # noqa: E402
from tr0n_rt.backends.tensorrt import TrtBackend, choose_step_path  # noqa: E402
from tr0n_rt.bundle import Bundle, load_bundle  # noqa: E402
from tr0n_rt.engine_profiles import select_profile  # noqa: E402
from tr0n_rt.engine_stamp import EngineMismatch, check_engine_compatible, sm_name, this_platform  # noqa: E402
from tr0n_rt.errors import BackendError, BundleError, ConfigError  # noqa: E402
from tr0n_rt.export import engines as engines_mod  # noqa: E402
from tr0n_rt.export.engines import (  # noqa: E402
    build_engines, builder_settings, plan_profiles, polygraphy_config, update_manifest,
)
from tr0n_rt.sampler import Sampler  # noqa: E402
from tr0n_rt.settings import SamplingConfig  # noqa: E402


@pytest.fixture
def bundle_copy(text_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(text_bundle, out)
    return out


def stamp(**kw):
    base = {"file": "step.fp16.plan", "precision": "fp16", "tensorrt": "10.3.0.26", "gpu": "Orin",
            "compute_capability": "sm_87", "platform": this_platform(), "hardware_compatible": False,
            "version_compatible": False}
    return {**base, **kw}


# --- profiles ---------------------------------------------------------------------------------------------
def test_profiles_cover_batch_copies_and_components_of_each_graph(text_bundle):
    m = load_bundle(text_bundle).manifest  # K = 3, sampling copies = 4
    step = plan_profiles(m, "step", batch_sizes=(8, 1))
    assert [(p["batch"], p["copies"], p["components"]) for p in step] == [(1, 4, 1), (1, 4, 3), (8, 4, 1), (8, 4, 3)]
    p = step[3]["shapes"]
    assert p["means"] == [8, 3, 8] and p["aug_noise"] == [8, 4, 8] and p["condition"] == [8, 16]
    assert p["step"] == [1] and p["latent_lr"] == [1] and p["adam_eps"] == [1]
    translator = plan_profiles(m, "translator", batch_sizes=(1, 8, 32))
    assert translator == [{"batch": b, "shapes": {"condition": [b, 16]}} for b in (1, 8, 32)]
    energy = plan_profiles(m, "energy", batch_sizes=(2,), copies=(8, 1))
    assert [(p["batch"], p["copies"]) for p in energy] == [(2, 1), (2, 8)] and "components" not in energy[0]
    assert plan_profiles(m, "step", batch_sizes=4, copies=2, components=3)[0]["shapes"]["sgld_noise"] == [4, 3, 8]


def test_bad_profile_requests_are_refused(text_bundle):
    m = load_bundle(text_bundle).manifest
    with pytest.raises(ConfigError, match="batch sizes must be positive integers"):
        plan_profiles(m, "step", batch_sizes=(0, 8))
    with pytest.raises(BundleError, match="no 'judge' graph"):
        plan_profiles(m, "judge")
    with pytest.raises(ConfigError, match="would get 160 profiles"):
        plan_profiles(m, "step", batch_sizes=range(1, 41), copies=(1, 2), components=(1, 3))
    odd = json.loads(json.dumps(m))
    odd["graphs"]["generator"]["inputs"]["latent"]["shape"] = ["batch", "width"]
    with pytest.raises(BundleError, match=r"dynamic axes \['width'\]"):
        plan_profiles(odd, "generator")


def test_builder_settings_become_a_polygraphy_config():
    fake = types.SimpleNamespace(MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
                                 HardwareCompatibilityLevel=types.SimpleNamespace(AMPERE_PLUS="ampere+"))
    s = builder_settings("fp16", opt_level=5, workspace_mib=1024, hardware_compatible=True)
    profiles = [{"batch": 1, "shapes": {"latent": [1, 8]}}, {"batch": 8, "shapes": {"latent": [8, 8]}}]
    cfg = polygraphy_config(fake, profiles, s)
    assert cfg.builder_optimization_level == 5 and cfg.memory_pool_limits == {"workspace": 1 << 30}
    assert cfg.hardware_compatibility_level == "ampere+" and not cfg.version_compatible
    assert not cfg.fp16 and not cfg.tf32  # strongly typed: precision comes from the graph
    assert [tuple(p["latent"].min) for p in cfg.profiles] == [(1, 8), (8, 8)]
    assert all(p["latent"].min == p["latent"].opt == p["latent"].max for p in cfg.profiles)
    with pytest.raises(ConfigError, match="optimisation level must be 0..5"):
        builder_settings(opt_level=7)
    with pytest.raises(ConfigError, match="unknown precision 'int8'"):
        builder_settings("int8")


# --- stamps and compatibility --------------------------------------------------------------------------
def test_an_engine_runs_only_where_it_was_built():
    check_engine_compatible(stamp(), "10.3.0.26", "Orin", "sm_87")
    check_engine_compatible(stamp(), "10.3.0.30", "Orin (64GB)", (8, 7))  # another build of 10.3.0, same SM
    with pytest.raises(BackendError, match=r"^engine built for sm_87 with TensorRT 10\.3; this GPU \(NVIDIA H100\) "
                                           r"is sm_90: rebuild with `tr0n-rt build engines/shapes`$"):
        check_engine_compatible(stamp(), "10.3.0.26", "NVIDIA H100", "9.0", bundle="engines/shapes")
    with pytest.raises(BackendError, match=r"this is TensorRT 10\.7 .*rebuild with `tr0n-rt build"):
        check_engine_compatible(stamp(), "10.7.0.23", "Orin", "sm_87")


def test_compatible_engines_accept_newer_gpus_and_tensorrt():
    hw = stamp(hardware_compatible=True, compute_capability="sm_86")
    check_engine_compatible(hw, "10.3.0", "NVIDIA H100", "sm_90")
    with pytest.raises(BackendError, match="hardware-compatible, Ampere or newer.*is sm_75"):
        check_engine_compatible(hw, "10.3.0", "Tesla T4", "sm_75")
    vc = stamp(version_compatible=True)
    check_engine_compatible(vc, "10.8.0.43", "Orin", "sm_87")
    with pytest.raises(BackendError, match="10.3.0 or a newer 10.x"):
        check_engine_compatible(vc, "10.2.1", "Orin", "sm_87")
    with pytest.raises(BackendError, match="failed to build.*ScatterND"):
        check_engine_compatible({"failed": "ScatterND unsupported", "precision": "fp16"}, "10.3.0", "Orin", "sm_87")
    assert sm_name("sm_100") == "sm_100" and sm_name(87) == "sm_87" and sm_name((12, 0)) == "sm_120"
    with pytest.raises(ConfigError, match="not a compute capability"):
        sm_name("ampere")


def test_version_compatible_engines_follow_tensorrts_documented_rule():
    """TensorRT 11.1 "Engine Compatibility", 11.4 support matrix "Engine Portability": a version-compatible
    plan runs on the TensorRT that built it or a newer one of its major, and across majors only 10.x ->
    11.x and 8.x -> 10.x; never on an older TensorRT. A default plan runs on its exact version only."""
    ten = stamp(version_compatible=True)  # built with 10.3.0.26
    for here in ("10.3.0.1", "10.16.1.11", "11.0.0.5", "11.4.1"):
        check_engine_compatible(ten, here, "Orin", "sm_87")
    for here in ("10.2.1", "12.0.0", "9.2.0"):
        rule = r"version-compatible: runs on TensorRT 10\.3\.0 or a newer 10\.x and on any TensorRT 11\.x\)"
        with pytest.raises(EngineMismatch, match=rf"{rule}; this is TensorRT {here}: rebuild with"):
            check_engine_compatible(ten, here, "Orin", "sm_87")
    eleven = stamp(version_compatible=True, tensorrt="11.0.0.5")
    check_engine_compatible(eleven, "11.1.0", "Orin", "sm_87")
    for here in ("10.16.1", "12.0.0"):  # no newer-to-older, and no documented 11 -> 12
        with pytest.raises(EngineMismatch, match=r"runs on TensorRT 11\.0\.0 or a newer 11\.x\); this is"):
            check_engine_compatible(eleven, here, "Orin", "sm_87")
    eight = stamp(version_compatible=True, tensorrt="8.6.1.6")
    check_engine_compatible(eight, "10.0.1", "Orin", "sm_87")
    for here in ("9.2.0", "11.0.0"):  # 8.x plans skip 9, and never reach 11
        with pytest.raises(EngineMismatch, match="and on any TensorRT 10.x"):
            check_engine_compatible(eight, here, "Orin", "sm_87")
    with pytest.raises(EngineMismatch, match=r"this is TensorRT 11\.0 \(11\.0\.0\)"):
        check_engine_compatible(stamp(), "11.0.0", "Orin", "sm_87")  # not version-compatible: exact version


def test_plans_run_only_on_the_platform_that_built_them():
    arm = stamp(platform="Linux-aarch64")
    check_engine_compatible(arm, "10.3.0.26", "Orin", "sm_87", here_platform="Linux-aarch64")
    with pytest.raises(EngineMismatch, match=r"^engine built for sm_87 with TensorRT 10\.3 on Linux-aarch64; "
                                             r"this machine is Linux-x86_64, .*: rebuild with "
                                             r"`tr0n-rt build engines/shapes`$"):
        check_engine_compatible(arm, "10.3.0.26", "Orin", "sm_87", bundle="engines/shapes",
                                here_platform="Linux-x86_64")
    old = stamp()
    del old["platform"]  # stamped before the platform was recorded
    with pytest.raises(EngineMismatch, match=r"records no platform .* this Linux-aarch64: rebuild with `tr0n-rt build"):
        check_engine_compatible(old, "10.3.0.26", "Orin", "sm_87", here_platform="Linux-aarch64")
    assert issubclass(EngineMismatch, BackendError)
    assert this_platform().count("-") >= 1 and this_platform().split("-")[0]


def test_profile_selection_pads_the_batch_up():
    s = {"profiles": [{"batch": b, "copies": 4, "components": k} for b in (1, 8, 32) for k in (1, 3)]}
    assert select_profile(s, 1, 4, 3) == (1, s["profiles"][1])
    index, p = select_profile(s, 5, 4, 1)
    assert (index, p["batch"]) == (2, 8)
    with pytest.raises(BackendError, match="batch 33 is larger than every engine profile .*--batch 33"):
        select_profile(s, 33, 4, 1)
    with pytest.raises(BackendError, match="no engine profile for copies=50, components=3.*--copies A"):
        select_profile(s, 1, 50, 3)
    assert select_profile({"profiles": [{"batch": 4}]}, 3) == (0, {"batch": 4})


# --- which engine runs the step ------------------------------------------------------------------------
def fake_bundle(folder, graphs=("text_encoder", "translator", "generator", "energy", "step")):
    return Bundle(Path(folder), {"graphs": {g: {} for g in graphs}}, None)


def all_engines(precision="fp16", **overrides):
    e = {g: {precision: stamp()} for g in ("text_encoder", "translator", "generator", "energy", "step")}
    e.update(overrides)
    return e


@pytest.mark.parametrize("case, trt, engines, torch_cuda, pipeline, kind, reason", [
    ("all built", True, all_engines(), False, False, "tensorrt", "every graph has a fp16 engine"),
    ("step failed", True, all_engines(step={"fp16": {"failed": "ScatterND"}}), True, True, "torch-hybrid",
     r"step engine failed to build \(ScatterND\): engines run the forward graphs, torch runs the step"),
    ("step missing", True, all_engines(step={}), True, True, "torch-hybrid", "the step has no fp16 engine"),
    ("step missing, no torch", True, all_engines(step={}), False, True, "onnxruntime",
     "torch fallback needs torch with CUDA.*--backend onnxruntime"),
    ("no pipeline.json", True, all_engines(step={}), True, False, "onnxruntime", "pipeline.json"),
    ("forward missing", True, all_engines(generator={}), True, True, "torch", "generator have no fp16 engine"),
    ("no TensorRT", False, all_engines(), True, True, "torch", "TensorRT is not installed"),
    ("nothing", False, None, False, False, "onnxruntime", "TensorRT is not installed"),
    ("fp32 asked, fp16 built", True, all_engines(), False, False, "onnxruntime", "step has no fp32 engine"),
])
def test_choose_step_path(tmp_path, case, trt, engines, torch_cuda, pipeline, kind, reason):
    if pipeline:
        (tmp_path / "pipeline.json").write_text("{}")
    precision = "fp32" if "fp32" in case else "fp16"
    path = choose_step_path(fake_bundle(tmp_path), trt, engines, torch_cuda=torch_cuda, precision=precision)
    assert path.kind == kind, (case, path)
    assert __import__("re").search(reason, path.reason), (case, path.reason)


# --- a stand-in TensorRT: engines are ONNX Runtime sessions over host arrays ------------------------------
class Registry(HostArrays):
    """HostArrays that remember every allocation by address, as TensorRT's view of device memory."""

    def __init__(self):
        super().__init__()
        self.arrays = {}

    def empty(self, shape, dtype):
        a = np.zeros(shape, dtype)
        self.arrays[self.ptr(a)] = a
        return a

    def view(self, ptr, shape, dtype):
        base = self.arrays[ptr]
        assert base.dtype == np.dtype(dtype), (base.dtype, dtype)
        return base.reshape(-1)[:int(np.prod(shape))].reshape(shape)


def fake_tensorrt(version="10.3.0.26"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC="static", USER_MANAGED="user")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="ampere+")
    trt.nptype = lambda dt: np.dtype(dt).type
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.Runtime = lambda logger: FakeRuntime(trt)
    trt.device = None  # the Registry the engines read and write
    trt.poison = None  # (graph, step number): that step's FP16 energy comes out NaN, as an overflow would
    trt.executed = []
    return trt


class FakeRuntime:
    def __init__(self, trt):
        self.trt, self.engine_host_code_allowed = trt, False

    def deserialize_cuda_engine(self, data):
        return FakeEngine(self.trt, json.loads(data))


class FakeEngine:
    def __init__(self, trt, plan):
        self.trt, self.plan = trt, plan
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(plan["onnx"], so, providers=["CPUExecutionProvider"])
        self.io = [(a, trt.TensorIOMode.INPUT) for a in self.session.get_inputs()] + \
                  [(a, trt.TensorIOMode.OUTPUT) for a in self.session.get_outputs()]
        self.num_io_tensors = len(self.io)
        self.device_memory_size_v2 = plan["memory"]

    def get_tensor_name(self, i):
        return self.io[i][0].name

    def _arg(self, name):
        return next((a, m) for a, m in self.io if a.name == name)

    def get_tensor_mode(self, name):
        return self._arg(name)[1]

    def get_tensor_dtype(self, name):
        return {"tensor(float)": "float32", "tensor(int64)": "int64"}[self._arg(name)[0].type]

    def get_tensor_shape(self, name):
        return [d if isinstance(d, int) else -1 for d in self._arg(name)[0].shape]

    def create_execution_context(self, strategy):
        assert strategy == "user"  # memory comes from the backend's shared block
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.memory, self.profile, self.shapes, self.addresses = engine, None, None, {}, {}

    def set_device_memory(self, ptr, size):
        assert size >= self.engine.plan["memory"]
        self.memory = ptr

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return list(shape) == self.engine.plan["profiles"][self.profile][name]  # static profiles only

    def get_tensor_shape(self, name):
        sizes = {}
        for a in self.engine.session.get_inputs():
            sizes.update({d: n for d, n in zip(a.shape, self.shapes[a.name]) if isinstance(d, str)})
        arg = self.engine._arg(name)[0]
        return tuple(sizes[d] if isinstance(d, str) else d for d in arg.shape)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        e, dev = self.engine, self.engine.trt.device
        assert self.memory is not None
        feed = {a.name: dev.view(self.addresses[a.name], self.shapes[a.name], e.get_tensor_dtype(a.name))
                for a in e.session.get_inputs()}
        outs = e.session.run(None, feed)
        graph = e.plan["graph"]
        e.trt.executed.append((graph, feed.get("step", [None])[0] if graph == "step" else None))
        for a, value in zip(e.session.get_outputs(), outs):
            fp16 = ".fp16." in e.plan["onnx"]
            if fp16 and e.trt.poison == (graph, feed.get("step", [None])[0]) and a.name == "energy":
                value = np.full_like(value, np.nan)
            dev.view(self.addresses[a.name], value.shape, value.dtype)[...] = value
        return True


@pytest.fixture
def fake_trt(monkeypatch):
    """Installs the stand-in as `tensorrt` for both backends, a fake GPU, and a polygraphy that 'builds'
    a plan naming its ONNX file and static profiles."""
    import polygraphy.backend.trt as poly

    trt = fake_tensorrt()
    trt.device = Registry()
    trt.configs = []
    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(engines_mod, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda_mod, "current_gpu", lambda device_id=0: ("Fake GPU", "sm_90"))
    monkeypatch.setattr(trt_mod, "open_device", lambda kind="auto", device_id=0: trt.device)
    monkeypatch.setattr(trt_mod, "_torch_cuda", lambda: False)
    trt.fail = ()

    def network_from_onnx_path(path, strongly_typed=False):
        assert strongly_typed
        return {"onnx": path}

    def engine_bytes_from_network(network, config, save_timing_cache=None):
        graph = Path(network["onnx"]).name.split(".")[0]
        if graph in trt.fail:
            raise RuntimeError(f"could not parse {graph}: unsupported op")
        trt.configs.append((graph, config))
        profiles = [{n: list(s.min) for n, s in p.items()} for p in config.profiles]
        assert all(s.min == s.opt == s.max for p in config.profiles for s in p.values())
        return json.dumps({"graph": graph, "onnx": network["onnx"], "profiles": profiles,
                           "memory": 1000 * (1 + len(graph))}).encode()

    monkeypatch.setattr(poly, "network_from_onnx_path", network_from_onnx_path)
    monkeypatch.setattr(poly, "engine_bytes_from_network", engine_bytes_from_network)
    return trt


def test_build_writes_plans_and_stamps_them_into_the_manifest(fake_trt, bundle_copy, tmp_path):
    before = json.loads((bundle_copy / "manifest.json").read_text())
    out = build_engines(bundle_copy, batch_sizes=(1, 4), precision="fp16", workspace_mib=512,
                        timing_cache=tmp_path / "timing.cache")
    assert set(out["engines"]) == set(before["graphs"]) and out["failed"] == {}
    m = load_bundle(bundle_copy).manifest  # checksums of every file, plans included, verified
    s = m["engines"]["step"]["fp16"]
    assert s["file"] == "step.fp16.plan"
    assert m["files"]["step.fp16.plan"] == {"sha256": s["sha256"], "bytes": s["bytes"]}
    assert (s["gpu"], s["compute_capability"], s["tensorrt"]) == ("Fake GPU", "sm_90", "10.3.0.26")
    assert s["platform"] == this_platform()
    assert [(p["batch"], p["components"]) for p in s["profiles"]] == [(1, 1), (1, 3), (4, 1), (4, 3)]
    assert s["builder"]["workspace_mib"] == 512 and s["builder"]["strongly_typed"] and s["precision"] == "fp16"
    assert s["source"] == {"file": "step.fp16.onnx", "sha256": before["files"]["step.fp16.onnx"]["sha256"]}
    assert {k: m[k] for k in before} == {**before, "files": m["files"]}  # nothing else of the manifest changed
    assert not list(bundle_copy.glob(".*part"))  # atomic writes left no temp files
    config = dict(fake_trt.configs)["generator"]
    assert config.memory_pool_limits == {"workspace": 512 << 20} and config.builder_optimization_level == 3
    # a second precision is stamped beside the first
    build_engines(bundle_copy, batch_sizes=(1, 4), precision="fp32", graphs=["step"])
    engines = load_bundle(bundle_copy).manifest["engines"]
    assert set(engines["step"]) == {"fp16", "fp32"} and set(engines["generator"]) == {"fp16"}


def test_a_failed_build_is_recorded_or_raised(fake_trt, bundle_copy):
    fake_trt.fail = ("step",)
    before = (bundle_copy / "manifest.json").read_text()
    with pytest.raises(BackendError, match="could not build the step engine from step.fp16.onnx: RuntimeError"):
        build_engines(bundle_copy, batch_sizes=(1,))
    assert (bundle_copy / "manifest.json").read_text() == before  # the manifest is written once, at the end
    out = build_engines(bundle_copy, batch_sizes=(1,), keep_going=True)
    assert "unsupported op" in out["failed"]["step"]
    m = load_bundle(bundle_copy).manifest
    assert "failed" in m["engines"]["step"]["fp16"] and "step.fp16.plan" not in m["files"]
    assert m["engines"]["step"]["fp16"]["platform"] == this_platform()
    assert choose_step_path(load_bundle(bundle_copy), True, m["engines"]).kind == "onnxruntime"  # no torch here


def test_without_tensorrt_build_and_open_say_how_to_install(bundle_copy):
    if trt_mod.tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendError, match=r"^TensorRT is not installed: pip install 'tr0n-rt\[gpu\]' on a machine "
                                           "with an NVIDIA GPU"):
        build_engines(bundle_copy)
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        TrtBackend.open(bundle_copy)
    with pytest.raises(ConfigError, match="runs on CUDA devices; got device 'cpu'"):
        TrtBackend.open(bundle_copy, device="cpu")


def test_backend_and_build_modules_import_without_torch_or_tensorrt():
    code = ("import sys; sys.modules.update(torch=None, tensorrt=None); "
            "import tr0n_rt.backends.tensorrt, tr0n_rt.backends.cuda, tr0n_rt.export.engines; "
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_manifest_update_is_atomic_and_lists_plans(bundle_copy, monkeypatch):
    plan = bundle_copy / "generator.fp16.plan"
    plan.write_bytes(b"plan")
    record = engines_mod.stamp_record(plan, [], builder_settings(), "10.3.0", "GPU", "sm_90", "generator.fp16.onnx",
                                      "0" * 64)
    before = (bundle_copy / "manifest.json").read_text()

    def crash(path, obj):
        raise OSError("disk full")
    monkeypatch.setattr(engines_mod, "write_json", crash)
    with pytest.raises(OSError):
        update_manifest(bundle_copy, {"generator": {"fp16": record}})
    assert (bundle_copy / "manifest.json").read_text() == before
    monkeypatch.undo()
    m = update_manifest(bundle_copy, {"generator": {"fp16": record}})
    assert m["files"]["generator.fp16.plan"]["bytes"] == 4
    with pytest.raises(BundleError, match="no 'judge' graph to stamp"):
        update_manifest(bundle_copy, {"judge": {"fp16": record}})


# --- the backend over the stand-in ----------------------------------------------------------------------
QUERIES = ["a red circle", "a blue square on a white background", "red"]


def built(bundle, precisions=("fp16",), batch_sizes=(1, 4)):
    for p in precisions:
        build_engines(bundle, batch_sizes=batch_sizes, precision=p, copies=3)
    return bundle


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_samples_equal_onnxruntime_with_padding_and_graph_replay(fake_trt, bundle_copy, tmp_path, precision):
    built(bundle_copy, (precision,))
    be = TrtBackend.open(bundle_copy, precision=precision)
    assert be.path.kind == "tensorrt" and be.device is fake_trt.device
    cfg = SamplingConfig(steps=4, copies=3)
    ours, ref = Sampler(be), Sampler(OrtBackend.open(bundle_copy, precision=precision, cache_dir=tmp_path))
    c = ref.conditions(QUERIES)
    np.testing.assert_allclose(ours.conditions(QUERIES), c, atol=1e-5)  # text encoder engine, batch 3 padded to 4
    for mode in ("mixture", "sample"):
        run = cfg.with_overrides(mode=mode)
        a, b = ours.sample(c, [3, 4, 5], run), ref.sample(c, [3, 4, 5], run)
        assert b.images.std() > 0.05
        np.testing.assert_allclose(a.images, b.images, atol=1e-4)
        np.testing.assert_allclose(a.energy_trace, b.energy_trace, atol=1e-5)  # each step's energy kept
        np.testing.assert_allclose(a.energies, b.energies, atol=1e-4)
    stats = be.graph_stats
    # one shape per mode (K = 3 mixture, K = 1 sample), two graphs each, four replays each; the state was
    # copied in once per sample and then only swapped between the two sets
    graphs = [(g["batch"], g["components"], g["captures"], g["replays"]) for g in stats["graphs"]]
    assert graphs == [(4, 1, 2, 4), (4, 3, 2, 4)]
    assert stats["state_copies"] == 2 and stats["eager_steps"] == 0
    assert be.fp16_fallbacks == (0 if precision == "fp16" else None)  # None: float32 engines have no guard
    assert be.graph_sources == {g: f"{g}.{precision}.plan" for g in be.bundle.manifest["graphs"]}
    assert be.load("step") is None and be.load("generator") is None  # loaded at open: nothing left to do
    with pytest.raises(BackendError, match=f"has no {precision} engine for graph 'judge'"):
        be.load("judge")
    # one shared block of device memory, as large as the largest engine needs
    assert be.scratch.nbytes == max(e.memory_size for e in be.engines.values())


def test_batch_one_runs_its_own_profile_and_bigger_batches_are_refused(fake_trt, bundle_copy):
    be = TrtBackend.open(built(bundle_copy))
    s = Sampler(be)
    one = s.sample(random_conditions(1, 16), [0], SamplingConfig(steps=2, copies=3))
    assert np.isfinite(one.images).all() and [g["batch"] for g in be.graph_stats["graphs"]] == [1]
    with pytest.raises(BackendError, match="batch 5 is larger than every engine profile"):
        s.sample(random_conditions(5, 16), list(range(5)), SamplingConfig(steps=2, copies=3))
    with pytest.raises(BackendError, match="no engine profile for copies=7"):
        s.sample(random_conditions(1, 16), [0], SamplingConfig(steps=2, copies=7))


def test_only_plans_the_manifest_lists_and_hashes_are_deserialised(fake_trt, bundle_copy, tmp_path):
    """A stamp naming a file outside `files` (or outside the bundle) is refused, and so is a plan that does
    not match its hash: TensorRT deserialises exactly the bytes that were verified."""
    built(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    stamp = manifest["engines"]["generator"]["fp16"]
    outside = tmp_path / "outside.plan"
    outside.write_bytes((bundle_copy / stamp["file"]).read_bytes())
    for name in (f"../{outside.name}", "unlisted.plan"):
        copy = tmp_path / f"b{len(name)}"
        shutil.copytree(bundle_copy, copy)
        shutil.copy(outside, copy / "unlisted.plan")
        m = json.loads((copy / "manifest.json").read_text())
        m["engines"]["generator"]["fp16"]["file"] = name
        (copy / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match="leaves the bundle folder|not listed"):
            TrtBackend.open(copy)
    plan = bundle_copy / stamp["file"]
    plan.write_bytes(plan.read_bytes().replace(b'"memory"', b'"memorx"'))  # same size, other bytes
    with pytest.raises(BundleError, match="does not match its sha256"):
        TrtBackend.open(bundle_copy)


@pytest.mark.parametrize("fp32_engine", [False, True])
def test_fp16_guard_recomputes_a_nan_step_in_float32(fake_trt, bundle_copy, tmp_path, fp32_engine):
    built(bundle_copy, ("fp16", "fp32") if fp32_engine else ("fp16",))
    be = TrtBackend.open(bundle_copy, precision="fp16")
    assert (be.fp32_step is not None) == fp32_engine
    fake_trt.poison = ("step", 2.0)  # the third step of every sample overflows
    cfg, c = SamplingConfig(steps=4, copies=3), random_conditions(3, 16)
    out = Sampler(be).sample(c, [0, 1, 2], cfg)
    assert be.fp16_fallbacks == 1 and np.isfinite(out.energy_trace).all() and np.isfinite(out.images).all()
    ref32 = Sampler(OrtBackend.open(bundle_copy, precision="fp32", cache_dir=tmp_path)).sample(c, [0, 1, 2], cfg)
    np.testing.assert_allclose(out.energy_trace[2], ref32.energy_trace[2], atol=1e-2)  # the recomputed step
    fake_trt.poison = None
    Sampler(be).sample(c, [0, 1, 2], cfg)
    assert be.fp16_fallbacks == 1
    guarded = [g for g, step in fake_trt.executed if g == "step"]
    assert guarded  # sanity: the stand-in did run


def test_a_step_without_engine_runs_in_torch_beside_the_forward_engines(fake_trt, bundle_copy, tmp_path, monkeypatch):
    """torch-hybrid: the step's build failed; translator, energy and generator still run as engines and the
    step runs in the torch backend (here on the CPU, where it is eager; on a GPU, captured)."""
    import tr0n_rt.backends.torch as torch_backend

    fake_trt.fail = ("step",)
    build_engines(bundle_copy, batch_sizes=(1, 4), precision="fp32", copies=3, keep_going=True)
    monkeypatch.setattr(trt_mod, "_torch_cuda", lambda: True)
    opened = []
    real_open = torch_backend.TorchBackend.open

    def open_on_cpu(folder, device="cpu", cuda_graphs=True):
        opened.append(device)
        return real_open(folder, device="cpu", cuda_graphs=cuda_graphs)
    monkeypatch.setattr(torch_backend.TorchBackend, "open", staticmethod(open_on_cpu))
    be = TrtBackend.open(bundle_copy, precision="fp32")
    assert be.path.kind == "torch-hybrid" and "step" not in be.engines and opened == ["cuda:0"]
    cfg, c = SamplingConfig(steps=3, copies=3), random_conditions(3, 16)
    a = Sampler(be).sample(c, [0, 1, 2], cfg)
    b = Sampler(OrtBackend.open(bundle_copy, cache_dir=tmp_path)).sample(c, [0, 1, 2], cfg)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)
    assert {g for g, _ in fake_trt.executed} == {"translator", "energy", "generator"}
    assert be.graph_sources["step"] == "torch" and be.graph_sources["generator"] == "generator.fp32.plan"
    assert be.fp16_fallbacks is None and be.load("step") is None


def test_engines_for_another_gpu_or_graph_are_refused_before_loading(fake_trt, bundle_copy, monkeypatch):
    built(bundle_copy)
    with monkeypatch.context() as m:
        m.setattr(cuda_mod, "current_gpu", lambda device_id=0: ("Orin", "sm_87"))
        with pytest.raises(BackendError, match=r"engine built for sm_90 with TensorRT 10\.3; this GPU \(Orin\) is "
                                               f"sm_87: rebuild with `tr0n-rt build {bundle_copy}`"):
            TrtBackend.open(bundle_copy)
    with monkeypatch.context() as m:
        m.setattr(stamp_mod, "this_platform", lambda: "Linux-aarch64")
        with pytest.raises(EngineMismatch, match=f"this machine is Linux-aarch64, .*`tr0n-rt build {bundle_copy}`"):
            TrtBackend.open(bundle_copy)
    with monkeypatch.context() as m:
        m.setattr(fake_trt, "__version__", "10.4.0.1")
        with pytest.raises(BackendError, match=r"with TensorRT 10\.3; this is TensorRT 10\.4"):
            TrtBackend.open(bundle_copy)
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["engines"]["generator"]["fp16"]["source"]["sha256"] = "0" * 64
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="generator engine was built from a different generator.fp16.onnx"):
        TrtBackend.open(bundle_copy)
    m.pop("engines")
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="has no TensorRT engines: build them with `tr0n-rt build"):
        TrtBackend.open(bundle_copy)


# --- real TensorRT (a GPU machine with `pip install 'tr0n-rt[gpu]'`) -------------------------------------------
def test_real_engines_match_onnxruntime(text_bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU machines: pip install 'tr0n-rt[gpu]')")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bundle = tmp_path / "bundle"
    shutil.copytree(text_bundle, bundle)
    build_engines(bundle, batch_sizes=(1, 4), copies=3, precision="fp32", timing_cache=tmp_path / "cache")
    build_engines(bundle, batch_sizes=(1, 4), copies=3, precision="fp16", timing_cache=tmp_path / "cache")
    cfg, c = SamplingConfig(steps=4, copies=3), random_conditions(3, 16)
    ref = Sampler(OrtBackend.open(bundle, cache_dir=tmp_path)).sample(c, [0, 1, 2], cfg)
    for precision, tol in (("fp32", 1e-3), ("fp16", 2e-2)):
        be = TrtBackend.open(bundle, precision=precision)
        out = Sampler(be).sample(c, [0, 1, 2], cfg)
        assert np.abs(out.images - ref.images).max() <= tol, (precision, np.abs(out.images - ref.images).max())
        assert be.graph_stats["graphs"][0]["replays"] == 4
