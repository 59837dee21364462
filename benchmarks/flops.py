"""FLOPs and bytes of one Langevin step, device peaks, the roofline floor and the achieved fraction of peak.

    python benchmarks/flops.py --pipeline /tmp/sg2-b32 --batch 1 16 --copies 8 50
    python benchmarks/flops.py --pipeline engines/shapes --batch 1 8 --copies 8 \\
        --timings benchmarks/speed-shapes.json --measure-cpu --json benchmarks/flops-shapes.json

Counting: torch.utils.flop_counter.FlopCounterMode over the torch step (export/step.py:langevin_step:
generator forward, DiffAugment and the condition model over A copies, autograd backward, SGLD/Adam
update), run on the meta device by default, so a ViT-B-32 step at A = 50 costs no compute. It counts
matmuls, convolutions and attention (2 FLOPs per multiply-add); elementwise ops count 0. The backward
needs gradients of the inputs only (weights are frozen), so it costs about one forward, not two.
Stages: generator forward, augmentation (the per-copy matrices), encoder forward (condition model
over the A copies), backward, update (0 FLOPs: elementwise).

Bytes, roughly, for the bandwidth side of the roofline (float32 as counted; FP16 halves them):
    weight reads     bytes of the parameters each op reads (forward and again in the backward)
    saved            activations autograd keeps for the backward (written once, read once)
    op outputs       every non-view op's output: what unfused eager execution writes
    floor bytes      weight reads + 2 x saved (the traffic even a fully fused engine cannot avoid)
    time floor       max(FLOPs / peak FLOP/s, floor bytes / peak bandwidth)
    achieved         FLOPs / (measured step time x peak FLOP/s)
GPU peaks are documented dense (no sparsity) figures (GPU_PEAKS). The CPU peak is MEASURED here
(--measure-cpu): the best float32 matmul rate and copy bandwidth of torch at its thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from tr0n_rt.export.augment import diff_augment
from tr0n_rt.export.step import energy_and_grads, langevin_step, mix
from tr0n_rt.settings import HPARAM_NAMES, SamplingConfig

STAGES = ("generator_forward", "augment_forward", "encoder_forward", "backward", "update")

# Dense (no 2:4 sparsity) peaks, FLOP/s and bytes/s. Sources: NVIDIA H100 Tensor Core GPU datasheet and
# the Hopper architecture whitepaper (H100 SXM5: FP16/BF16 989.4 TFLOP/s dense, TF32 494.7, FP32 66.9
# non-tensor, HBM3 3.35 TB/s; H100 PCIe: 756 / 378 / 51.2, HBM2e 2.0 TB/s); NVIDIA H200 datasheet (H200
# SXM: the H100 SXM's compute, HBM3e 4.8 TB/s); NVIDIA A100 datasheet (A100 SXM4 80GB: FP16 312, TF32
# 156, FP32 19.5, 2.039 TB/s). Datasheets quote tensor-core figures with sparsity: dense is half.
GPU_PEAKS = {
    "H100 SXM": {"fp16": 989.4e12, "bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bandwidth": 3.35e12},
    "H100 PCIe": {"fp16": 756.0e12, "bf16": 756.0e12, "tf32": 378.0e12, "fp32": 51.2e12, "bandwidth": 2.0e12},
    "H200 SXM": {"fp16": 989.4e12, "bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bandwidth": 4.8e12},
    "A100 SXM 80GB": {"fp16": 312.0e12, "bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12,
                      "bandwidth": 2.039e12},
}


def gpu_peak(name: str) -> tuple[str, dict] | None:
    """A CUDA device name ("NVIDIA H100 80GB HBM3") -> (GPU_PEAKS key, peaks), or None when not tabled."""
    n = name.lower()
    if "h200" in n and "nvl" not in n:  # the H200 NVL is clocked lower: not tabled
        return "H200 SXM", GPU_PEAKS["H200 SXM"]
    if "h100" in n and "pcie" in n:
        return "H100 PCIe", GPU_PEAKS["H100 PCIe"]
    if "h100" in n and ("hbm3" in n or "sxm" in n):
        return "H100 SXM", GPU_PEAKS["H100 SXM"]
    if "a100" in n and "80gb" in n and "pcie" not in n:
        return "A100 SXM 80GB", GPU_PEAKS["A100 SXM 80GB"]
    return None


# --- counting -----------------------------------------------------------------------------------------
class Traffic(TorchDispatchMode):
    """Bytes per aten op: parameter bytes read (by storage, so views and transposes of a weight count)
    and bytes of every non-view op's output. `saved` (filled by save_hook) holds activations kept for
    the backward, parameters excluded, each storage once."""

    def __init__(self, weights):
        super().__init__()
        self.weights = {storage_key(w): w.nbytes for w in weights}
        self.weight_reads = self.outputs = 0
        self.saved: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            inputs = {storage_key(t) for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)}
            self.weight_reads += sum(self.weights.get(k, 0) for k in inputs)
            self.outputs += sum(t.nbytes for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out

    def save_hook(self, t: torch.Tensor):
        key = storage_key(t)
        if key not in self.weights:
            self.saved[key] = max(self.saved.get(key, 0), t.untyped_storage().nbytes())
        return t


def storage_key(t: torch.Tensor) -> int:
    # _cdata: the storage's C++ address, which identifies it on the meta device too (data_ptr() is 0 there)
    return t.untyped_storage()._cdata


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_inputs(energy, batch: int, copies: int, components: int, cond_dim: int, device) -> dict:
    """Random step inputs for counting (values do not change FLOPs or bytes)."""
    d = energy.generator.latent.dim
    state = {n: torch.randn(batch, components, d, device=device) for n in ("means", "logits", "velocity", "adam_m")}
    state["adam_v"] = torch.rand(batch, components, d, device=device)
    state["step"] = torch.zeros(1, device=device)
    return {"state": state, "condition": torch.randn(batch, cond_dim, device=device),
            "aug_noise": torch.rand(batch, max(copies, 1), 8, device=device),
            "sgld_noise": torch.randn(batch, components, d, device=device),
            **{n: torch.from_numpy(v).to(device) for n, v in SamplingConfig().hparams().items()}}


def step_cost(energy, batch: int, copies: int, components: int, cond_dim: int, device="meta") -> dict:
    """FLOPs per stage and bytes of one langevin_step of `energy` at batch B, A copies, K components.

    The energy's modules must already live on `device`."""
    x = step_inputs(energy, batch, copies, components, cond_dim, device)
    st, c, u = x["state"], x["condition"], x["aug_noise"]
    g = energy.generator
    images = torch.zeros(batch * u.shape[1], g.channels, g.image_size, g.image_size, device=device)
    alpha = torch.zeros(1, device=device) if energy.aesthetic is not None else None  # [1] aesthetic weight
    with torch.no_grad():
        gen = count_flops(lambda: g(mix(st["means"], st["logits"])))
        aug = count_flops(lambda: diff_augment(images, u.reshape(-1, 8), energy.augment))
        forward = count_flops(lambda: energy(mix(st["means"], st["logits"]), c, u, alpha))
    grads = count_flops(lambda: energy_and_grads(energy, st["means"], st["logits"], c, u, alpha))
    weights = [*energy.parameters(), *energy.buffers()]
    traffic = Traffic(weights)
    with FlopCounterMode(display=False) as counter, traffic, \
            torch.autograd.graph.saved_tensors_hooks(traffic.save_hook, lambda t: t):
        langevin_step(energy, st, c, u, x["sgld_noise"], {n: x[n] for n in HPARAM_NAMES}, aesthetic_weight=alpha)
    total = counter.get_total_flops()
    flops = {"generator_forward": gen, "augment_forward": aug, "encoder_forward": forward - gen - aug,
             "backward": grads - forward, "update": total - grads}
    saved = sum(traffic.saved.values())
    return {"batch": batch, "copies": copies, "components": components, "flops": total, "stage_flops": flops,
            "weight_read_bytes": traffic.weight_reads, "saved_activation_bytes": saved,
            "op_output_bytes": traffic.outputs, "floor_bytes": traffic.weight_reads + 2 * saved}


def load_energy(folder: Path, device: str = "meta"):
    """(energy on `device`, cond_dim, K, pipeline name) of a pipeline folder."""
    from tr0n_rt.export.pipeline import TorchPipeline

    p = TorchPipeline.load(folder)
    energy = p.energy().to(device)
    return energy, p.translator.config.cond_dim, p.translator.config.num_components, p.name


def roofline_floor(flops: float, floor_bytes: float, peak_flops: float, bandwidth: float) -> float:
    """Seconds: the step cannot run faster than its FLOPs at peak or its compulsory bytes at peak bandwidth."""
    return max(flops / peak_flops, floor_bytes / bandwidth)


# --- measured CPU peak ----------------------------------------------------------------------------------
def measure_cpu_peak(n: int = 2048, repeats: int = 5, copy_mib: int = 256) -> dict:
    """MEASURED, not documented: best float32 matmul FLOP/s (n x n) and copy bandwidth (read + write of
    copy_mib MiB) of torch on this CPU at torch.get_num_threads() threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    src = torch.ones(copy_mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best_copy = min(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    from tr0n_rt.bench import cpu_model

    return {"fp32": 2 * n**3 / best, "bandwidth": 2 * src.nbytes / best_copy, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "measured": True,
            "method": f"torch.mm {n}x{n} float32, best of {repeats}; copy of {copy_mib} MiB"}


def timed(fn) -> float:
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


# --- joining with measured step times ---------------------------------------------------------------------
def timing_rows(result: dict) -> list[dict]:
    """speed.py rows (median_ms per step) or `tr0n-rt bench` rows (step_ms) -> batch, copies, backend, ms."""
    rows = []
    for r in result.get("rows", []):
        ms = r.get("median_ms", r.get("step_ms"))
        if ms is None or "batch" not in r:
            continue
        name = r["backend"] + (f" {r['precision']}" if r.get("precision") and r["precision"] not in r["backend"] else "")
        precision = "fp16" if "fp16" in name else ("tf32" if result.get("tf32") else "fp32")  # TF32: tensor cores
        rows.append({"batch": r["batch"], "copies": r["copies"], "backend": name, "step_ms": ms,
                     "precision": precision})
    return rows


def achieved(cost: dict, step_ms: float, peaks: dict, precision: str) -> dict:
    """Achieved FLOP/s, fraction of peak and the roofline floor for one timed row."""
    scale = 0.5 if precision in ("fp16", "bf16") else 1.0  # bytes were counted in float32
    peak = peaks[precision] if precision in peaks else peaks["fp32"]
    floor = roofline_floor(cost["flops"], cost["floor_bytes"] * scale, peak, peaks["bandwidth"])
    rate = cost["flops"] / (step_ms / 1e3)
    return {"achieved_flops": rate, "fraction_of_peak": rate / peak, "peak_flops": peak,
            "floor_ms": floor * 1e3, "floor_over_measured": floor * 1e3 / step_ms}


def timing_peaks(timings: dict, gpu: str | None, cpu_peak: dict | None) -> tuple[str | None, dict | None]:
    """The peaks a timings file is measured against: --gpu, else its GPU's documented peaks, else the
    CPU peak measured here (only meaningful on the machine that took the timings)."""
    if gpu:
        return gpu, GPU_PEAKS[gpu]
    host = timings.get("host") or timings.get("machine") or {}
    found = gpu_peak(host["gpu"]) if isinstance(host, dict) and host.get("gpu") else None
    if found:
        return found
    on_cpu = timings.get("device", (timings.get("settings") or {}).get("device", "cpu")) == "cpu"
    if cpu_peak and on_cpu and isinstance(host, dict) and host.get("cpu") == cpu_peak.get("cpu"):
        return f"this CPU, measured ({cpu_peak['threads']} threads)", cpu_peak
    return None, None  # a CPU peak from another machine (or session, on a VM) would be a wrong denominator


TARGET_FRACTION = 0.4  # issue 6: the GPU Langevin step at >= 40% of the device's dense FP16 peak


def gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 1000 else f"{g:.4g}"


def cost_table(name: str, costs: list[dict], peaks: dict | None = None, peaks_name: str = "") -> str:
    """Markdown: FLOPs per stage and bytes; with `peaks`, the FP16 roofline floor (and which side binds)
    and the step time that would be TARGET_FRACTION of the FP16 peak."""
    extra = (f" | floor ms on {peaks_name} FP16 | bound | ms at {TARGET_FRACTION:.0%} of FP16 peak" if peaks else "")
    lines = [(f"| pipeline | batch | A | K | GFLOP / step | generator fwd | augment fwd | encoder fwd | backward | "
              f"MB weights read (fp32) | MB saved activations (fp32){extra} |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---|---:|" if peaks else "")]
    for c in costs:
        s = c["stage_flops"]
        cells = [name, c["batch"], c["copies"], c["components"], gflop(c["flops"]),
                 *(gflop(s[k]) for k in STAGES[:4]), f"{c['weight_read_bytes'] / 1e6:.0f}",
                 f"{c['saved_activation_bytes'] / 1e6:.0f}"]
        if peaks:
            compute, memory = c["flops"] / peaks["fp16"], c["floor_bytes"] / 2 / peaks["bandwidth"]
            cells += [f"{max(compute, memory) * 1e3:.3g}", "compute" if compute >= memory else "memory",
                      f"{c['flops'] / (TARGET_FRACTION * peaks['fp16']) * 1e3:.3g}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, required=True, help="pipeline folder (pipeline.json)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--copies", type=int, nargs="+", default=[8])
    ap.add_argument("--components", type=int, nargs="+", default=None, help="K (default: the translator's)")
    ap.add_argument("--device", default="meta", help="where to count: meta (no compute, default) or cpu")
    ap.add_argument("--timings", type=Path, nargs="*", default=[],
                    help="speed.py or `tr0n-rt bench` JSON: adds achieved FLOP/s and fraction of peak per row")
    ap.add_argument("--measure-cpu", action="store_true", help="measure this CPU's peak (for CPU timings)")
    ap.add_argument("--gpu", default=None, choices=sorted(GPU_PEAKS),
                    help="documented peaks to use (default: the timings' GPU, else the measured CPU)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    energy, cond_dim, k_default, name = load_energy(args.pipeline, args.device)
    costs = [step_cost(energy, b, a, k, cond_dim, args.device)
             for k in args.components or [k_default] for a in args.copies for b in args.batch]
    result = {"pipeline": str(args.pipeline), "name": name, "counted_on": args.device, "torch": torch.__version__,
              "costs": costs, "gpu_peaks": GPU_PEAKS}
    print(cost_table(name, costs, GPU_PEAKS["H100 SXM"], "H100 SXM"))

    cpu_peak = None
    if args.measure_cpu:
        cpu_peak = result["cpu_peak"] = measure_cpu_peak()
        print(f"\nmeasured CPU peak: {cpu_peak['fp32'] / 1e9:.1f} GFLOP/s float32 matmul, "
              f"{cpu_peak['bandwidth'] / 1e9:.1f} GB/s copy, {cpu_peak['threads']} threads")
    by_shape = {(c["batch"], c["copies"]): c for c in costs}
    joined = []
    for path in args.timings:
        timings = json.loads(path.read_text())
        peaks_name, peaks = timing_peaks(timings, args.gpu, cpu_peak)
        if peaks is None:
            print(f"{path}: no peak for its device: give --gpu NAME, or time it again here with speed.py and pass "
                  "--measure-cpu (a CPU peak counts only for timings whose JSON names the same CPU)")
            continue
        for row in timing_rows(timings):
            cost = by_shape.get((row["batch"], row["copies"]))
            if cost is not None:
                joined.append({**row, "timings": str(path), "peaks": peaks_name, "flops": cost["flops"],
                               **achieved(cost, row["step_ms"], peaks, row["precision"])})
    if joined:
        result["achieved"] = joined
        print("\n| peaks | batch | A | backend | step ms | GFLOP/s | fraction of peak | floor ms |"
              "\n|---|---:|---:|---|---:|---:|---:|---:|")
        for r in joined:
            print(f"| {r['peaks']} | {r['batch']} | {r['copies']} | {r['backend']} | {r['step_ms']:.1f} | "
                  f"{r['achieved_flops'] / 1e9:.1f} | {r['fraction_of_peak']:.1%} | {r['floor_ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
