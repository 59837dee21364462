"""The memory plan (tr0n_rt/memory.py): counted bytes -> batch and chunk within a budget; the sampler runs it."""
import numpy as np
import pytest

from tr0n_rt.errors import ConfigError
from tr0n_rt.memory import (
    RESERVE,
    MemoryBudgetError,
    MemoryModel,
    balanced_chunk,
    parse_bytes,
    peak_of,
    plan,
)

MIB = 2**20


def manifest(chunked: bool = True) -> dict:
    """A bundle whose loop graphs have simple counted rows (bytes): G activations 100 MiB per image,
    encoder activations 10 MiB per copy and image; weights 50 MiB per graph file."""
    g = {"generator": [[0, 40 * MIB, 0, 0]], "energy": [[0, 40 * MIB, 0, 4 * MIB]],
         "step": [[0, 100 * MIB, 0, 10 * MIB]], "energy_grad": [[0, 5 * MIB, 0, 10 * MIB]],
         "update": [[0, 100 * MIB, 0, 0]]}
    if not chunked:
        del g["energy_grad"], g["update"]
    graphs = {name: {"files": {"fp32": f"{name}.onnx"}, "inputs": {}, "outputs": {}, "activations": {"fp32": rows}}
              for name, rows in g.items()}
    graphs["translator"] = {"files": {"fp32": "translator.onnx"}, "inputs": {}, "outputs": {}}
    files = {f"{name}.onnx": {"bytes": 50 * MIB, "sha256": "0" * 64} for name in graphs}
    return {"graphs": graphs, "files": files, "sampling": {"copies": 50}}


def test_parse_bytes():
    assert parse_bytes("8G") == 8 * 2**30
    assert parse_bytes("512 MiB") == 512 * MIB
    assert parse_bytes("1.5gb") == int(1.5 * 2**30)
    assert parse_bytes(3 * MIB) == 3 * MIB
    for bad in ("8 bananas", "-1G", "1K", "", True, "2P"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)


def test_peak_of_rows():
    rows = [[1, 2, 0, 3], [10, 0, 0, 0]]
    assert peak_of(rows, 1, 1) == 10
    assert peak_of(rows, 2, 5) == 1 + 4 + 30


def test_model_predicts_each_path():
    m = MemoryModel(manifest())
    assert m.counted and m.chunked
    # step path: weights of translator, step, energy, generator; activations max(step, energy, generator)
    assert m.peak(2, 50, None) == 4 * 50 * MIB + 2 * 100 * MIB + 100 * 10 * MIB
    # chunked: weights of translator, generator, energy_grad, update, energy; activations max(update, chunk)
    assert m.peak(2, 50, 8) == 5 * 50 * MIB + max(200 * MIB, 10 * MIB + 160 * MIB)
    assert m.peak(1, 50, 8) < m.peak(1, 50, None)


def test_plan_prefers_step_then_chunks_then_sub_batches():
    m = MemoryModel(manifest())
    assert plan(m, None, 4, 50).chunk is None  # no budget: no plan
    roomy = plan(m, 10 * 2**30, 4, 50)
    assert (roomy.batch, roomy.chunk, roomy.path) == (4, None, "step")
    # 4 images at A = 50 in one step graph need 2.2 GiB of activations; in chunks they fit 1 GiB
    p = plan(m, 2**30, 4, 50)
    assert p.batch == 4 and p.chunk is not None and p.path == "chunked"
    usable = 2**30 * (1 - RESERVE)
    assert p.peak_bytes <= usable
    largest = max(k for k in range(1, 51) if m.peak(4, 50, k) <= usable)
    assert largest < 50 and p.chunk == balanced_chunk(50, largest)
    # too little for 4 images even in chunks of one copy (G's backward alone): the batch is split
    small = plan(m, 0.7 * 2**30, 4, 50)
    assert small.batch == 2 and m.peak(small.batch, 50, small.chunk) <= 0.7 * 2**30 * (1 - RESERVE)
    with pytest.raises(MemoryBudgetError, match="no batch fits"):
        plan(m, 100 * MIB, 4, 50)


def test_balanced_chunks():
    assert balanced_chunk(50, 30) == 25
    assert balanced_chunk(50, 50) == 50
    assert balanced_chunk(50, 7) == 7
    assert balanced_chunk(8, 3) == 3


def test_bundle_without_chunked_graphs():
    m = MemoryModel(manifest(chunked=False))
    assert m.counted and not m.chunked
    p = plan(m, 2**30, 4, 50)  # only sub-batching is left
    assert p.chunk is None and p.batch < 4
    with pytest.raises(MemoryBudgetError, match="re-export"):
        plan(m, 300 * MIB, 4, 50)
    with pytest.raises(ConfigError, match="no chunked step"):
        plan(m, None, 4, 50, chunk=8)


def test_uncounted_bundle_runs_unplanned():
    bare = manifest()
    for e in bare["graphs"].values():
        e.pop("activations", None)
    p = plan(MemoryModel(bare), 2**30, 4, 50)
    assert (p.batch, p.chunk, p.counted) == (4, None, False)


def test_exported_bundle_counts_its_loop_graphs(text_bundle):
    import json

    m = json.loads((text_bundle / "manifest.json").read_text())
    for g in ("generator", "energy", "step", "energy_grad", "update"):
        assert set(m["graphs"][g]["activations"]) == {"fp32", "fp16"}
    model = MemoryModel(m)
    assert model.counted and model.chunked
    # counts grow with the copies for the step and a chunk, not for the update
    assert model.act("step", 2, 50) > model.act("step", 2, 8) > 0
    assert model.act("update", 2) == model.act("update", 2, 50) > 0


@pytest.mark.parametrize("chunk", [1, 3])
def test_sampler_chunked_and_sub_batched_equal_one_step_graph(text_bundle, tmp_path, chunk):
    from tr0n_rt.backends.onnxruntime import OrtBackend
    from tr0n_rt.sampler import Sampler
    from tr0n_rt.settings import SamplingConfig

    be = OrtBackend.open(text_bundle, cache_dir=tmp_path)
    cfg = SamplingConfig(steps=4, copies=5)
    c = np.random.default_rng(0).standard_normal((3, be.info.cond_dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    ref = Sampler(be, cfg, memory_budget=None).sample(c, [0, 1, 2])
    assert ref.plan["path"] == "step"
    out = Sampler(be, cfg, memory_budget=None, chunk=chunk).sample(c, [0, 1, 2])
    assert out.plan == {**out.plan, "path": "chunked", "chunk": chunk, "batch": 3}
    np.testing.assert_allclose(out.images, ref.images, atol=1e-5)
    np.testing.assert_allclose(out.energy_trace, ref.energy_trace, atol=1e-6)
    np.testing.assert_allclose(out.energies, ref.energies, atol=1e-6)
    # a budget that holds one image at a time in chunks: three sub-batches of one row, the same images
    model = be.memory_model()  # the counts with onnxruntime's CPU activation factor
    assert model.activation_factor > 1
    one = model.peak(1, 5, chunk) / (1 - RESERVE)
    assert model.peak(2, 5, chunk) > model.peak(1, 5, chunk)
    split = Sampler(be, cfg, memory_budget=int(one) + 1, chunk=chunk).sample(c, [0, 1, 2])
    assert split.plan["batch"] == 1 and split.plan["sub_batches"] == 3
    np.testing.assert_allclose(split.images, ref.images, atol=1e-5)
    assert split.seeds == [0, 1, 2] and split.energy_trace.shape == ref.energy_trace.shape


def test_sampler_refuses_chunks_on_a_bundle_without_them(text_bundle, tmp_path):
    import json
    import shutil

    from tr0n_rt.backends.onnxruntime import OrtBackend
    from tr0n_rt.sampler import Sampler

    old = tmp_path / "old"
    shutil.copytree(text_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    for g in ("energy_grad", "update"):
        del m["graphs"][g]
    (old / "manifest.json").write_text(json.dumps(m))
    be = OrtBackend.open(old, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="re-export"):
        Sampler(be, chunk=2)


def test_build_profiles_follow_the_plan():
    """`tr0n-rt build --memory-budget`: engines for the planned sub-batches and chunks (no TensorRT needed)."""
    from tr0n_rt.export.engines import memory_profiles

    m = manifest()
    roomy = memory_profiles(m, 10 * 2**30, [1, 4], 50, "fp32")
    assert roomy["skip"] == [] and roomy["batch_sizes"] == [1, 4] and roomy["copies"]["step"] == [50]
    tight = memory_profiles(m, 0.7 * 2**30, [1, 4], 50, "fp32")
    plans = {p["rows"]: p for p in tight["plans"]}
    assert plans[4]["batch"] == 2 and plans[4]["path"] == "chunked" and plans[4]["sub_batches"] == 2
    assert tight["skip"] == ["step"]  # every plan chunked: no step engine to build
    assert tight["batch_sizes"] == sorted({p["batch"] for p in tight["plans"]})
    assert tight["copies"]["energy_grad"] == sorted({p["chunk"] for p in tight["plans"]})
    bare = manifest()
    for e in bare["graphs"].values():
        e.pop("activations", None)
    with pytest.raises(Exception, match="re-export"):
        memory_profiles(bare, 2**30, [1], 50, "fp32")


def test_cli_refuses_a_budget_nothing_fits_before_writing(tmp_path, capsys):
    from tr0n_rt.cli import main

    out = tmp_path / "out"
    assert main(["sample", "--world", "digits", "3", "--memory-budget", "64K", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no batch fits the memory budget of 64 KiB: one image at 8 copies needs about" in err
    assert "--memory-budget" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["sample", "--world", "digits", "3", "--memory-budget", "lots", "--out", str(out)])
    assert "is not a size" in capsys.readouterr().err


def test_cli_sample_records_the_plan(tmp_path):
    import json

    from tr0n_rt.cli import main

    out = tmp_path / "out"
    assert main(["sample", "--world", "digits", "3", "7", "--steps", "2", "--copies", "5", "--chunk", "2",
                 "--no-judge", "--out", str(out)]) == 0
    plan_ = json.loads((out / "samples.json").read_text())["memory_plan"]
    assert plan_["path"] == "chunked" and plan_["chunk"] == 2 and plan_["batch"] == 2 and plan_["sub_batches"] == 1
