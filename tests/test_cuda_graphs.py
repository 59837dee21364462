"""CUDA-graph bookkeeping, on the CPU: which shapes are captured, the ping-pong buffer plan, replay counts,
the FP16 guard's recompute; the torch backend's captured step against eager (a recorder stands in for
the CUDA graph on the CPU; the real thing runs where CUDA is); benchmarks/gpu_check.py without a GPU."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tr0n_rt.backends.cuda import HostArrays, put
from tr0n_rt.backends.step_graphs import PingPong, StepGraphs, shape_key
from tr0n_rt.engine_profiles import pick_batch
from tr0n_rt.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]
STATE = {"x": "x_next", "v": "v_next"}


def toy_step(dev, poison=lambda x: False):
    """A stand-in engine over host arrays: x' = x + noise, v' = 0.5 v + x, energy = sum(x') per row."""
    calls = []

    def prepare(key, b, slot):
        def enqueue():
            calls.append((key, slot, dev.ptr(b["x"]), dev.ptr(b["x_next"])))
            b["x_next"][...] = b["x"] + b["noise"]
            b["v_next"][...] = 0.5 * b["v"] + b["x"]
            b["energy"][...] = b["x_next"].sum(axis=(1, 2))
            if poison(b["x"]):
                b["energy"][0] = np.nan
        return enqueue

    def alloc(key):
        b, a, k = key
        return {"x": ((b, k, 3), "float32"), "v": ((b, k, 3), "float32"), "noise": ((b, k, 3), "float32"),
                "energy": ((b,), "float32")}
    return prepare, alloc, calls


def graphs(dev, **kw):
    prepare, alloc, calls = toy_step(dev, kw.pop("poison", lambda x: False))
    sg = StepGraphs(dev, STATE, ("noise",), ("energy",), {"x", "v", "noise", "energy", "x_next", "v_next"},
                    prepare, alloc, **kw)
    return sg, calls


def eager(x, v, noises):
    energies = []
    for n in noises:
        x, v = x + n, 0.5 * v + x
        energies.append(x.sum(axis=(1, 2)))
    return x, v, energies


def run_loop(sg, x, v, noises, padded=None):
    rows = x.shape[0]
    key = (padded or rows, 1, x.shape[1])
    state, energies, addresses = {"x": x, "v": v}, [], []
    for n in noises:
        out = sg.run(key, {**state, "noise": n}, rows=rows)
        state = {"x": out["x_next"], "v": out["v_next"]}
        energies.append(out["energy"])
        addresses.append(sg.device.ptr(out["x_next"]))
    return state, energies, addresses


def test_the_ping_pong_plan_reads_one_set_and_writes_the_other():
    pp = PingPong(STATE, ("noise", "energy"))
    pp.sets = [{"x": "A.x", "v": "A.v"}, {"x": "B.x", "v": "B.v"}]
    pp.shared = {"noise": "N", "energy": "E"}
    assert pp.bindings(0) == {"x": "A.x", "v": "A.v", "x_next": "B.x", "v_next": "B.v", "noise": "N", "energy": "E"}
    assert pp.bindings(1) == {"x": "B.x", "v": "B.v", "x_next": "A.x", "v_next": "A.v", "noise": "N", "energy": "E"}


def test_t_replays_equal_eager_steps_with_two_captures_and_no_state_copies():
    dev = HostArrays()
    sg, calls = graphs(dev)
    rng = np.random.default_rng(0)
    x, v = rng.standard_normal((2, 3, 3)).astype(np.float32), np.zeros((2, 3, 3), np.float32)
    noises = [rng.standard_normal((2, 3, 3)).astype(np.float32) for _ in range(7)]
    state, energies, addresses = run_loop(sg, x, v, noises)
    ex, ev, ee = eager(x, v, noises)
    np.testing.assert_allclose(state["x"], ex, rtol=1e-6)
    np.testing.assert_allclose(state["v"], ev, rtol=1e-6)
    np.testing.assert_allclose(np.stack(energies), np.stack(ee), rtol=1e-6)  # each step's energy kept
    stats = sg.stats.as_dict()
    assert stats["graphs"] == [{"batch": 2, "copies": 1, "components": 3, "captures": 2, "replays": 7}]
    assert stats["state_copies"] == 1 and stats["eager_steps"] == 0 and dev.captures == 2
    # outputs alternate between the two sets: B, A, B, ... (graph 0 writes B, graph 1 writes A)
    a, b = (dev.ptr(sg.entries[(2, 1, 3)][0].sets[i]["x"]) for i in (0, 1))
    assert addresses == [b, a] * 3 + [b]
    # each graph ran once as warm-up before its capture (a capture records, it does not run), then the
    # replays alternate
    assert [slot for _, slot, _, _ in calls] == [0, 1] + [0, 1] * 3 + [0]
    # a new sample (state from the host) is copied into set A again
    run_loop(sg, x, v, noises[:2])
    assert sg.stats.copies_in == 2 and sg.stats.captures == {(2, 1, 3): 2}


def test_a_shape_is_captured_once_and_padded_rows_are_dropped():
    dev = HostArrays()
    sg, _ = graphs(dev)
    rng = np.random.default_rng(1)
    noises = [rng.standard_normal((3, 1, 3)).astype(np.float32) for _ in range(4)]
    x, v = np.ones((3, 1, 3), np.float32), np.zeros((3, 1, 3), np.float32)
    state, energies, _ = run_loop(sg, x, v, noises, padded=4)
    assert state["x"].shape == (3, 1, 3) and energies[0].shape == (3,)
    np.testing.assert_allclose(state["x"], eager(x, v, noises)[0], rtol=1e-6)
    run_loop(sg, x[:1], v[:1], [n[:1] for n in noises], padded=4)  # batch 1 padded to the same profile
    run_loop(sg, x[:, :1], v[:, :1], noises, padded=4)
    assert sorted(sg.stats.captures) == [(4, 1, 1)] and sg.stats.replays == {(4, 1, 1): 12}


def test_without_graphs_or_when_capture_fails_steps_run_eagerly():
    dev = HostArrays()
    sg, _ = graphs(dev, use_graphs=False)
    x, v = np.ones((1, 1, 3), np.float32), np.zeros((1, 1, 3), np.float32)
    state, _, _ = run_loop(sg, x, v, [np.ones((1, 1, 3), np.float32)] * 3)
    assert sg.stats.eager == 3 and sg.stats.captures == {} and dev.captures == 0
    np.testing.assert_allclose(state["x"], 4.0)

    class Refuses(HostArrays):
        def capture(self, fn, warmup=0):
            raise RuntimeError("operation not permitted when stream is capturing")
    sg, _ = graphs(Refuses())
    state, _, _ = run_loop(sg, x, v, [np.ones((1, 1, 3), np.float32)] * 3)
    np.testing.assert_allclose(state["x"], 4.0)
    assert sg.stats.eager == 3 and "not permitted" in sg.stats.as_dict()["capture_errors"]["(1, 1, 1)"]


def test_fp16_guard_recomputes_only_the_steps_with_nan():
    """The toy "FP16 engine" returns a NaN energy whenever x[0] > 2.5; the fallback recomputes in float64."""
    dev = HostArrays()
    recomputed = []

    def fallback(key, b, parity):
        recomputed.append(parity)
        b["x_next"][...] = b["x"] + b["noise"]
        b["v_next"][...] = 0.5 * b["v"] + b["x"]
        b["energy"][...] = b["x_next"].astype(np.float64).sum(axis=(1, 2))

    sg, _ = graphs(dev, poison=lambda x: x[0, 0, 0] > 2.5, check=lambda out: dev.all_finite(out.values()),
                   fallback=fallback)
    x, v = np.zeros((2, 1, 3), np.float32), np.zeros((2, 1, 3), np.float32)
    noises = [np.ones((2, 1, 3), np.float32)] * 5  # x[0] = 0, 1, 2, 3, 4 at the steps' inputs
    state, energies, _ = run_loop(sg, x, v, noises)
    assert sg.fallbacks == 2 and recomputed == [1, 0]  # the 4th and 5th steps, on whichever graph ran them
    assert np.isfinite(np.stack(energies)).all()
    np.testing.assert_allclose(np.stack(energies), np.stack(eager(x, v, noises)[2]))
    np.testing.assert_allclose(state["x"], 5.0)
    sg, _ = graphs(dev, poison=lambda x: True)  # no guard: the NaN comes through
    assert np.isnan(run_loop(sg, x, v, noises[:1])[1][0][0])


def test_helpers():
    assert shape_key({"means": (8, 3, 512), "aug_noise": (8, 50, 8)}) == (8, 50, 3)
    assert pick_batch(1, (1, 8, 32)) == 1 and pick_batch(9, (32, 1, 8)) == 32
    with pytest.raises(BackendError, match="batch 40 is larger than every engine profile"):
        pick_batch(40, (1, 8, 32))
    dev = HostArrays()
    dst = dev.empty((2, 2), "float32")
    put(dev, dst, [[1, 2], [3, 4]])
    put(dev, dst, dst)  # itself: nothing to do
    assert dst.tolist() == [[1, 2], [3, 4]]


# --- the torch backend's captured step ----------------------------------------------------------------------
torch = pytest.importorskip("torch")


def test_torch_backend_stays_eager_on_the_cpu(tiny_text_pipeline):
    from tr0n_rt.backends.torch import TorchBackend

    be = TorchBackend.open(tiny_text_pipeline)
    assert be.step_graphs is None and be.graph_stats == {}


def test_torch_captured_step_equals_eager_with_a_recorder(tiny_text_pipeline):
    """TorchStepGraphs' static-input logic on the CPU: a recorder replays the captured function."""
    from tr0n_rt.backends.torch import TorchBackend, TorchStepGraphs
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    ref = TorchBackend.open(tiny_text_pipeline)
    be = TorchBackend.open(tiny_text_pipeline)
    be.step_graphs = TorchStepGraphs(be, device=HostArrays())
    cfg = SamplingConfig(steps=4, copies=3)
    c = Sampler(ref).encode_text(["a red circle", "blue square"])
    for mode in ("mixture", "sample"):
        a = Sampler(be).sample(c, [1, 2], cfg.with_overrides(mode=mode))
        b = Sampler(ref).sample(c, [1, 2], cfg.with_overrides(mode=mode))
        np.testing.assert_allclose(a.images, b.images, atol=1e-6)
        np.testing.assert_allclose(a.energy_trace, b.energy_trace, atol=1e-6)
    stats = be.graph_stats
    assert [(g["batch"], g["copies"], g["components"], g["captures"], g["replays"]) for g in stats["graphs"]] == \
        [(2, 3, 1, 1, 4), (2, 3, 3, 1, 4)]
    assert stats["state_copies"] == 2  # once per sample; afterwards the state is advanced in place


def test_torch_step_runs_eagerly_where_capture_fails(tiny_text_pipeline):
    from tr0n_rt.backends.torch import TorchBackend, TorchStepGraphs
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    class Refuses(HostArrays):
        def capture(self, fn, warmup=0):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
    ref, be = TorchBackend.open(tiny_text_pipeline), TorchBackend.open(tiny_text_pipeline)
    be.step_graphs = TorchStepGraphs(be, device=Refuses())
    cfg, c = SamplingConfig(steps=3, copies=2), np.eye(2, 16, dtype=np.float32)
    np.testing.assert_array_equal(Sampler(be).sample(c, [0, 1], cfg).images, Sampler(ref).sample(c, [0, 1], cfg).images)
    stats = be.graph_stats
    assert stats["eager_steps"] == 3 and "not permitted" in stats["capture_errors"]["(2, 2, 3)"]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())")


@cuda
def test_torch_cuda_graph_step_matches_eager_on_the_gpu(tiny_text_pipeline):
    from tr0n_rt.backends.torch import TorchBackend
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    graph = TorchBackend.open(tiny_text_pipeline, device="cuda")
    eager = TorchBackend.open(tiny_text_pipeline, device="cuda", cuda_graphs=False)
    cfg = SamplingConfig(steps=5, copies=3)
    c = Sampler(eager).encode_text(["a red circle", "blue square", "red"])
    a, b = Sampler(graph).sample(c, [0, 1, 2], cfg), Sampler(eager).sample(c, [0, 1, 2], cfg)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)
    assert graph.graph_stats["graphs"][0]["replays"] == 5


@cuda
def test_step_graphs_on_real_cuda_devices():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import check_device

    assert check_device("torch")["ok"]
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    assert check_device("cuda-python")["ok"]


# --- benchmarks/gpu_check.py ------------------------------------------------------------------------------
@pytest.fixture
def gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    yield gpu_check
    sys.path.remove(str(ROOT / "benchmarks"))


def test_gpu_check_without_a_gpu_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run the whole check")
    script = ROOT / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "x.json")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no NVIDIA GPU present" in done.stdout and not (tmp_path / "x.json").exists()


def test_gpu_check_device_layer_on_host_arrays(gpu_check):
    """The same ping-pong check the script runs on torch and cuda-python buffers, here on numpy."""
    out = gpu_check.check_device("host")
    assert out["ok"], out


def test_gpu_check_helpers(gpu_check, tmp_path):
    assert gpu_check.median_ms([0.3, 0.1, 0.2], per=10) == pytest.approx(20.0)
    assert gpu_check.speedup(10.0, 4.0) == 2.5 and gpu_check.speedup(None, 1.0) is None
    d, ok = gpu_check.max_excess(np.array([1.0, 2.00001]), np.array([1.0, 2.0]), 1e-5, 1e-5)
    assert ok and d == pytest.approx(1e-5)
    assert not gpu_check.max_excess(np.array([np.nan]), np.array([1.0]), 1.0)[1]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline.json").write_text("{}")
    sources = gpu_check.pipeline_sources([str(tmp_path / "p"), str(tmp_path / "none"), "vit"])
    assert sources[0] == ("p", tmp_path / "p", None) and "no pipeline.json" in sources[1][2]
    assert sources[2] == ("vit-b-32+dcgan-64", None, None)
    row = {"pipeline": "digits", "batch": 8, "sample_eager_s": 0.5, "sample_graph_s": 0.25, "sample_speedup": 2.0,
           "step_eager_ms": 4.0, "step_graph_ms": 1.0, "step_speedup": 4.0, "step_max_diff": 0.0,
           "images_max_diff": 1e-6, "parity_ok": True}
    table = gpu_check.markdown_table({"gpu": {"name": "NVIDIA H100", "compute_capability": "sm_90"}, "rows": [
        row, {"pipeline": "shapes", "skipped": "no pipeline.json"}], "device_checks": [
        {"device": "torch", "ok": True, "detail": "6 replays"}]})
    assert "NVIDIA H100 (sm_90)" in table and "| digits | 8 | 0.500 | 0.250 | 2.00x | 4.00 | 1.00 | 4.00x |" in table
    assert "skipped: no pipeline.json" in table and "Device check torch: ok" in table


def test_gpu_session_script_keeps_to_its_budget_and_packs_what_it_ran(tmp_path):
    """benchmarks/gpu_session.sh with a budget that only the first stage fits: that stage runs, every later
    one is skipped and said so, and the results archive holds the first stage's log."""
    import tarfile

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "OUT": str(tmp_path), "GPU_SESSION_BUDGET": "22", "GPU_SESSION_DEVICE": "cpu"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_session.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "== env: exit 0" in summary and "python " in summary
    for later in ("tests", "graphs", "pipeline", "reference", "flops"):
        assert f"== {later}: skipped" in summary, summary
    with tarfile.open(tmp_path / "gpu_session.tgz") as tar:
        assert "./env.log" in tar.getnames()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["gpu_session.tgz", "summary.txt"]


def test_torch_captured_chunked_step_equals_eager_with_a_recorder(tiny_text_pipeline):
    """The chunked step (generator, energy_grad per chunk, update) captured as one graph per shape and chunk:
    the recorder replays the captured sequence; results equal the eager chunked step and the one-graph step."""
    from tr0n_rt.backends.torch import TorchBackend, TorchStepGraphs
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    ref = TorchBackend.open(tiny_text_pipeline)
    be = TorchBackend.open(tiny_text_pipeline)
    be.step_graphs = TorchStepGraphs(be, device=HostArrays())
    cfg = SamplingConfig(steps=4, copies=5)
    c = Sampler(ref).encode_text(["a red circle", "blue square"])
    a = Sampler(be, cfg, memory_budget=None, chunk=2).sample(c, [1, 2])
    b = Sampler(ref, cfg, memory_budget=None, chunk=2).sample(c, [1, 2])
    one = Sampler(ref, cfg, memory_budget=None).sample(c, [1, 2])
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    np.testing.assert_allclose(a.energy_trace, b.energy_trace, atol=1e-6)
    np.testing.assert_allclose(a.images, one.images, atol=1e-5)
    stats = be.graph_stats
    assert [(g["batch"], g["copies"], g["components"], g.get("chunk"), g["captures"], g["replays"])
            for g in stats["graphs"]] == [(2, 5, 3, 2, 1, 4)]
    assert stats["state_copies"] == 1 and stats["eager_steps"] == 0
