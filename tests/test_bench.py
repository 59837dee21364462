"""Benchmarks measure what they claim: FLOPs against a hand count, `tr0n-rt bench` rows, the chart's bars.
Speed itself is never asserted."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn
from torch.nn import functional as F
from tr0n_rt.export.augment import AugmentConfig
from tr0n_rt.export.energy import Energy
from tr0n_rt.export.models.base import ConditionModel, Generator, LatentSpec

from tr0n_rt.chart import COLORS
from tr0n_rt.cli import main as cli_main
from tr0n_rt.paths import engines_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import chart
    import flops

    yield flops, chart
    sys.path.remove(str(ROOT / "benchmarks"))


class LinearGenerator(Generator):
    """G(z) = W z + b, reshaped to [B, C, S, S]."""

    def __init__(self, dim: int, channels: int, size: int):
        super().__init__()
        self.latent, self.channels, self.image_size = LatentSpec(dim), channels, size
        self.fc = nn.Linear(dim, channels * size * size)

    def forward(self, z):
        return self.fc(z).reshape(-1, self.channels, self.image_size, self.image_size)


class LinearEncoder(ConditionModel):
    """f(x) = normalize(W flatten(x) + b); score = cosine similarity."""

    kind = "clip"

    def __init__(self, pixels: int, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.fc = nn.Linear(pixels, cond_dim)

    def encode_images(self, images):
        return F.normalize(self.fc(images.flatten(1)), dim=-1)

    def score(self, images, c):
        return (self.encode_images(images) * F.normalize(c, dim=-1)).sum(-1)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_step_flops_and_weight_reads_match_a_hand_count(benchmarks, device):
    flops, _ = benchmarks
    b, a, k, d, c, s, dc = 2, 3, 2, 5, 3, 4, 6
    pixels = c * s * s
    g = LinearGenerator(d, c, s).requires_grad_(False)
    f = LinearEncoder(pixels, dc).requires_grad_(False)
    energy = Energy(g, f, AugmentConfig(policy=("translation",))).to(device)  # out = T_rows @ x @ T_cols^T

    cost = flops.step_cost(energy, batch=b, copies=a, components=k, cond_dim=dc, device=device)

    gen = 2 * b * d * pixels  # [B, D] x [D, CSS]
    aug = b * a * c * (2 * s * s * s + 2 * s * s * s)  # two [S, S] x [S, S] products per copy and channel
    enc = 2 * b * a * pixels * dc  # [BA, CSS] x [CSS, dc]
    # the backward needs input gradients only (frozen weights): one product per forward product
    assert cost["stage_flops"] == {"generator_forward": gen, "augment_forward": aug, "encoder_forward": enc,
                                   "backward": gen + aug + enc, "update": 0}
    assert cost["flops"] == 2 * (gen + aug + enc)
    # each weight read in the forward and again in the backward, each bias in the forward only (float32)
    assert cost["weight_read_bytes"] == 4 * (2 * d * pixels + pixels + 2 * pixels * dc + dc)
    assert cost["saved_activation_bytes"] > 0


def test_roofline_floor_is_the_slower_of_compute_and_memory(benchmarks):
    flops, _ = benchmarks
    name, peaks = flops.gpu_peak("NVIDIA H100 80GB HBM3")
    assert name == "H100 SXM" and peaks["fp16"] == 989.4e12
    assert flops.gpu_peak("NVIDIA H200")[0] == "H200 SXM" and flops.gpu_peak("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert flops.gpu_peak("NVIDIA GeForce RTX 4090") is None
    assert flops.roofline_floor(989.4e12, 1.0, peaks["fp16"], peaks["bandwidth"]) == pytest.approx(1.0)  # compute
    assert flops.roofline_floor(1.0, 3.35e12, peaks["fp16"], peaks["bandwidth"]) == pytest.approx(1.0)  # memory


def test_cpu_timings_join_only_the_peak_of_the_same_cpu(benchmarks):
    """A CPU peak is a denominator for timings taken on that CPU only: timings from another machine (or a
    file that does not say) get none, rather than a fraction over 100%."""
    flops, _ = benchmarks
    peak = {"fp32": 2e11, "bandwidth": 5e10, "threads": 2, "cpu": "AMD EPYC 9B14"}
    here = {"device": "cpu", "host": {"cpu": "AMD EPYC 9B14"}, "rows": []}
    assert flops.timing_peaks(here, None, peak)[1] is peak
    assert flops.timing_peaks({**here, "host": {"cpu": "Intel Xeon"}}, None, peak) == (None, None)
    assert flops.timing_peaks({"device": "cpu", "rows": []}, None, peak) == (None, None)
    gpu = {"device": "cuda", "host": {"gpu": "NVIDIA H200"}, "tf32": True,
           "rows": [{"batch": 1, "copies": 8, "backend": "torch cuda graph", "median_ms": 2.0}]}
    assert flops.timing_peaks(gpu, None, peak)[0] == "H200 SXM"
    assert flops.timing_rows(gpu)[0]["precision"] == "tf32"  # TF32 rows are held to the tensor-core peak
    assert flops.timing_rows({**gpu, "tf32": False})[0]["precision"] == "fp32"
    assert flops.gpu_peak("NVIDIA H200 NVL") is None  # clocked lower than the SXM figures


def test_bench_command_is_registered_with_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "usage: tr0n-rt bench" in text and "--backends" in text and "--repeats" in text


@pytest.mark.slow
def test_bench_on_the_shapes_world_writes_rows_per_configuration(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    if not (engines_dir() / "shapes" / "manifest.json").is_file():
        pytest.skip("the shapes world's bundle is not in engines/")
    monkeypatch.setenv("TR0N_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = cli_main(["bench", "--world", "shapes", "--backends", "onnxruntime", "torch", "--batch", "2", "--steps", "2",
                     "--copies", "2", "--warmup", "0", "--repeats", "2", "--json", str(out), "--png", str(png)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["machine"]["name"] and result["settings"]["steps"] == 2
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"onnxruntime", "torch"} and not any("error" in r for r in rows.values())
    for r in rows.values():
        assert (r["batch"], r["steps"], r["copies"]) == (2, 2, 2)
        assert all(r[k] > 0 for k in ("import_s", "load_s", "first_image_s", "startup_s", "batch_ms", "images_per_s",
                                      "step_ms", "peak_rss_mib"))
        assert all(v > 0 for v in r["stages_ms"].values()) and set(r["stages_ms"]) == {
            "encode", "translate", "langevin", "final_energy", "decode"}
        assert r["batch_ms_min"] <= r["batch_ms"] <= r["batch_ms_max"]
    # each configuration ran in its own process: the onnxruntime one never loaded torch, so its peak is its own
    assert not rows["onnxruntime"]["torch_imported"] and rows["torch"]["torch_imported"]
    assert rows["onnxruntime"]["peak_rss_mib"] < rows["torch"]["peak_rss_mib"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_bars_are_proportional_to_the_values(benchmarks, tmp_path):
    _, chart = benchmarks
    from PIL import Image

    row = {"precision": "fp32", "device": "cpu", "batch": 1, "step_ms": 5.0}
    result = {"pipeline_name": "tiny", "machine": {"name": "test machine"}, "settings": {"steps": 2, "copies": 2},
              "rows": [{**row, "backend": "torch", "images_per_s": 10.0},
                       {**row, "backend": "onnxruntime", "images_per_s": 20.0}]}
    (tmp_path / "r.json").write_text(json.dumps(result))
    assert chart.main([str(tmp_path / "r.json"), "--out", str(tmp_path / "r.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "r.png").convert("RGB"))
    panel = img[30:30 + 340, 60:600]  # the images/s plot, legend excluded

    def pixels(hex_color):
        return int((panel == np.frombuffer(bytes.fromhex(hex_color[1:]), np.uint8)).all(axis=-1).sum())
    torch_px, ort_px = pixels(COLORS[0]), pixels(COLORS[1])
    assert torch_px > 100 and ort_px / torch_px == pytest.approx(2.0, rel=0.05)


def test_reference_chart_skips_rows_that_ran_out_of_memory(benchmarks):
    _, chart = benchmarks
    result = {"pipeline": "/x/vitb32", "prompts": 4, "rows": [
        {"config": "reference loop (batch 1, eager)", "images_per_s": 0.5},
        {"config": "tr0n-rt torch eager (batch 4)", "error": "out of memory: CUDA"}]}
    assert chart.render(result).size[0] > 0
