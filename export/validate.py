"""Every exported graph against torch, on fresh random inputs, at two different inputs (a gradient
frozen into a constant cannot match both), run by polygraphy's ONNX Runtime runner.

Tolerances (relative error = ||onnx - torch|| / ||torch|| over a whole output tensor, which stays
meaningful where elementwise relative error explodes on near-zero elements):
    float32:  <= 1e-4 on every output (gradients included; the step graph's outputs are the update);
              where torch's own float32 result is itself further than that from float64 (kinks in tiny
              nets), within 10x torch's float32 error of the float64 result, at most 1e-2, recorded
              in the report as "ill_conditioned"; where ONNX Runtime alone is further (rounding put it
              on the other side of a kink that torch's float32 happens to share with float64), the same
              test at a nearby input (float inputs moved by KINK_NUDGE of their mean magnitude), recorded
              as "kink"
    float16:  <= 1e-2 on E; cosine >= 0.999 between the FP16 and float32 gradients; <= 2e-2 elsewhere;
              the logits' Adam step achieves >= 98% of float32's first-order descent (FP16_ADAM_STEP_DESCENT)
The step graph's gradients are read from its outputs with zero optimizer state: velocity_next is then
the clipped dE/dmeans and adam_m_next = (1 - beta1) * clipped dE/dlogits.
"""
from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import torch

from tr0n_rt.errors import Tr0nError
from tr0n_rt.graphs import GraphSpec

from .graphs import example_inputs, graph_function, graph_specs
from .pipeline import TorchPipeline

FP32_RTOL = 1e-4
ILL_CONDITIONED_FACTOR = 10.0  # see _against_float64
FP32_CAP = 1e-2
FP16_ENERGY_RTOL = 1e-2
FP16_GRAD_COSINE = 0.999
FP16_RTOL = 2e-2
# The logits' update, Adam's first step u = -lr g / (|g| + eps), is about -lr sign(g) per component: it
# jumps at g = 0, so a component whose gradient FP16 cannot resolve flips sign whatever the graph does.
# Its cosine to float32's update, 1 - 2 x the fraction of components flipped, counts such flips as much
# as any other: in mixture mode the K logits of one latent dimension d share dE/dz'_d, so one such d of
# one sample flips K components, and the shapes step (K = 10, D = 20, batch 3) read 0.9667 for a single
# d whose |g| was 0.11 of the sample's rms (float32 itself flips it when only G's output is rounded to
# FP16: 0.96665); over 12 random inputs the shipped shapes world read down to 0.850 (3 of 12 below
# 0.98) with a gradient cosine >= 0.9986. The gate is therefore the share of float32's first-order
# energy decrease that the FP16 update achieves, sum(g u16) / sum(g u32) with g the float32 gradient:
# a flip costs 2 |g_i| / ||g||_1 of it, so unresolved components cost what they matter to E. It reads
# 0.9998 without flips, 0.991-0.9998 on those 12 inputs (styled world 0.996-0.9998), and -1 for a
# reversed update. At most 1% of the descent lost (a uniform 1% flipped, as the cosine bound allowed):
FP16_ADAM_STEP_DESCENT = 0.98
CASES = ((11, 2, 3), (12, 3, 5))  # (seed, batch, copies): two different inputs and shapes
# A kink (ReLU, max, floor) is crossed within rounding only on a set of measure zero: on the shapes step
# with an adapted image tower, one sample's velocity was 1.9e-4 off float64 (whole-tensor 1.5e-4) while
# torch float32 was 1.2e-6 off; moving `means` by 1e-6 of its magnitude put ONNX Runtime back at 1.2e-6.
# A wrong or frozen graph is as wrong at the nudged input.
KINK_NUDGE = 1e-6


class ValidationError(Tr0nError):
    """An exported graph disagrees with torch beyond the stated tolerance."""


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def descent(update: np.ndarray, reference: np.ndarray, gradient: np.ndarray) -> float:
    """sum(gradient * update) / sum(gradient * reference): the share of the reference update's first-order
    change of E that `update` achieves (1: the same, -1: reversed)."""
    g = gradient.reshape(-1).astype(np.float64)
    num, den = g @ update.reshape(-1), g @ reference.reshape(-1)
    return float(num / den) if den != 0 else 1.0  # den = 0: no gradient, nothing to descend


def _feeds(p: TorchPipeline, spec: GraphSpec, zero_state: bool) -> list[dict[str, torch.Tensor]]:
    """The CASES' inputs. zero_state (step): zero optimizer state and SGLD noise, so that each state
    update is a function of the gradient alone (FP16 checks compare those updates)."""
    feeds = []
    for seed, batch, copies in CASES:
        x = example_inputs(p, spec.name, batch=batch, copies=copies, seed=seed)
        if zero_state and spec.name in ("step", "update"):
            for n in ("velocity", "adam_m", "adam_v", "sgld_noise"):
                x[n] = torch.zeros_like(x[n])
        feeds.append(x)
    return feeds


def onnx_runner(path: Path):
    """Runs a graph on each feed with polygraphy's ONNX Runtime runner (CPU), optimised as the runtime
    backend optimises it."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.logger import G_LOGGER

    from tr0n_rt.backends.onnxruntime import optimization_level

    G_LOGGER.module_severity = G_LOGGER.WARNING  # not a line per session

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = optimization_level(ort, "fp16" if ".fp16." in path.name else "fp32", False)
    # No memory arena: it would hold each run's peak (GBs for a real-size step) until the session goes
    so.enable_cpu_mem_arena = False
    # By path, never a serialized model: ORT reads a graph's external weights file from beside it
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return OnnxrtRunner(session, name=f"onnxruntime:{path.name}")


def run_onnx(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    with onnx_runner(path) as runner:
        out = [dict(runner.infer(feed)) for feed in feeds]
    release_memory()
    return out


def run_torch(p: TorchPipeline, spec: GraphSpec, feeds) -> list[dict[str, np.ndarray]]:
    fn = graph_function(p, spec.name)
    with torch.no_grad():
        out = [{n: o.detach().numpy() for n, o in zip(spec.outputs, fn(*[x[i] for i in spec.inputs]))} for x in feeds]
    release_memory()
    return out


def release_memory() -> None:
    """Hands freed activations back to the OS (glibc keeps them otherwise: 1.9 GB after a ViT-B-16 step
    at batch 3 x 5 copies), so that the next runner starts from the weights alone."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def validate_fp32(p: TorchPipeline, spec: GraphSpec, path: Path) -> dict:
    """polygraphy's Comparator (ONNX Runtime vs torch, median elementwise error within FP32_RTOL) and
    the whole-tensor relative error of every output <= FP32_RTOL; raises ValidationError otherwise."""
    from polygraphy.comparator import Comparator

    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:  # polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple
    from polygraphy.comparator.struct import IterationResult

    feeds = _feeds(p, spec, zero_state=False)
    ref = run_torch(p, spec, feeds)
    results = Comparator.run([onnx_runner(path)], data_loader=[{k: v.numpy() for k, v in x.items()} for x in feeds])
    release_memory()
    results.append(("torch", [IterationResult(outputs=r, runner_name="torch") for r in ref]))
    accepted = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
        rtol=FP32_RTOL, atol=FP32_RTOL * 1e-2, check_error_stat="median"))
    if not accepted:
        raise ValidationError(f"{path.name}: an output differs from torch (polygraphy Comparator: median "
                              f"elementwise error beyond rtol {FP32_RTOL:.0e})")
    got = [dict(it) for it in results[0][1]]
    errs = {o: max(rel_err(g[o], r[o]) for g, r in zip(got, ref)) for o in spec.outputs}
    worst = max(errs, key=errs.get)
    report = {"max_rel_err": errs[worst], "rel_err": errs}
    if errs[worst] > FP32_RTOL:
        report["ill_conditioned"] = _against_float64(p, spec, feeds, ref, got, path)
    _check_inputs_matter(got, spec)
    return report


def _against_float64(p: TorchPipeline, spec: GraphSpec, feeds, ref, got, path: Path) -> dict:
    """The fallback when ONNX Runtime and torch disagree beyond FP32_RTOL: is torch's own float32 result
    that far from the truth? Both are compared with torch in float64. The graph passes if, for every
    output, ONNX Runtime is within ILL_CONDITIONED_FACTOR x torch's own float32 error of the float64
    result (and within FP32_CAP). That happens at kinks (a ReLU or max whose branch flips with rounding
    in a net of a few channels: seen on a 4-channel random BigGAN, where torch float32 itself is 1e-3
    from float64); a wrong or frozen graph is still orders of magnitude off. Where only ONNX Runtime's
    rounding crossed the kink, the same test runs once more at a nearby input (_nudged, KINK_NUDGE) and
    the report says "kink". Raises ValidationError."""
    out, failed = _within_float64(p, spec, feeds, ref, got)
    if not failed:
        return out
    nudged = _nudged(feeds)
    retry, still = _within_float64(p, spec, nudged, run_torch(p, spec, nudged),
                                  run_onnx(path, [{k: v.numpy() for k, v in x.items()} for x in nudged]))
    if still:
        o = still[0]
        raise ValidationError(
            f"{path.name}: output {o!r} differs from torch by {max(rel_err(g[o], r[o]) for g, r in zip(got, ref)):.2e} "
            f"relative (float32 tolerance {FP32_RTOL:.0e}), and from torch in float64 by {out[o]['onnx_vs_fp64']:.2e}, "
            f"where torch's own float32 result is {out[o]['torch_fp32_vs_fp64']:.2e} from it (at a nearby input: "
            f"{retry[o]['onnx_vs_fp64']:.2e} and {retry[o]['torch_fp32_vs_fp64']:.2e})")
    return {o: {**out[o], "kink": {"nudge": KINK_NUDGE, **retry[o]}} if o in failed else out[o] for o in out}


def _within_float64(p: TorchPipeline, spec: GraphSpec, feeds, ref, got) -> tuple[dict, list[str]]:
    """Per output, ONNX Runtime's and torch float32's distance to torch float64 over the feeds, and the
    outputs where ONNX Runtime is beyond max(FP32_RTOL, ILL_CONDITIONED_FACTOR x torch's) or FP32_CAP."""
    ref64 = run_torch_float64(p, spec, feeds)
    out, failed = {}, []
    for o in spec.outputs:
        torch_err = max(rel_err(r[o], r64[o]) for r, r64 in zip(ref, ref64))
        onnx_err = max(rel_err(g[o], r64[o]) for g, r64 in zip(got, ref64))
        if onnx_err > min(FP32_CAP, max(FP32_RTOL, ILL_CONDITIONED_FACTOR * torch_err)):
            failed.append(o)
        out[o] = {"torch_fp32_vs_fp64": torch_err, "onnx_vs_fp64": onnx_err}
    return out, failed


def _nudged(feeds, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """The feeds with every float tensor of more than one element moved by KINK_NUDGE x its mean
    magnitude (normal noise, seeded); scalars (hyperparameters) and integer inputs unchanged."""
    g = torch.Generator().manual_seed(seed)
    return [{k: v + KINK_NUDGE * v.abs().mean() * torch.randn(v.shape, generator=g, dtype=v.dtype)
             if v.is_floating_point() and v.numel() > 1 else v for k, v in x.items()} for x in feeds]


def run_torch_float64(p: TorchPipeline, spec: GraphSpec, feeds) -> list[dict[str, np.ndarray]]:
    """The graph's torch function in float64 (modules converted for the call, then back)."""
    modules = [m for m in (p.generator, p.condition_model, p.translator, p.image_translator, p.aesthetic)
               if m is not None]
    for m in modules:
        m.double()
    try:
        feeds64 = [{k: v.double() if v.is_floating_point() else v for k, v in x.items()} for x in feeds]
        return run_torch(p, spec, feeds64)
    finally:
        for m in modules:
            m.float()


def graph_spec(p: TorchPipeline, name: str) -> GraphSpec:
    return next(s for s in graph_specs(p) if s.name == name)


def _check_inputs_matter(got, spec: GraphSpec) -> None:
    """Two different inputs must give different outputs (else the graph computes a constant)."""
    for o in spec.outputs:
        a, b = got[0][o], got[1][o]
        if o != "std" and a.shape[1:] == b.shape[1:] and np.allclose(a[:1], b[:1]):
            raise ValidationError(f"{spec.name}: output {o!r} is the same for two different inputs: "
                                  "it was frozen into a constant during export")


def validate_fp16(p: TorchPipeline, spec: GraphSpec, path16: Path, path32: Path, strict: bool = True) -> dict:
    """FP16 against the float32 graph (same feeds). Beyond the FP16 tolerances: ValidationError when
    strict, else the report says `within_tolerance: False` (for random-weight test models)."""
    feeds = [{k: v.numpy() for k, v in x.items()} for x in _feeds(p, spec, zero_state=True)]
    ref, got = run_onnx(path32, feeds), run_onnx(path16, feeds)
    report = {}
    for o in spec.outputs:
        if not all(np.isfinite(g[o]).all() for g in got):
            raise ValidationError(f"{path16.name}: output {o!r} is not finite in FP16 (overflow or underflow "
                                  "into a division): keep that part of the graph in float32 (export/fp16.py)")
        report[o] = max(rel_err(g[o], r[o]) for g, r in zip(got, ref))
    checks = []
    if "energy" in spec.outputs:
        checks.append(("energy rel err", report["energy"], FP16_ENERGY_RTOL, "max"))
    if spec.name == "energy_grad":  # this chunk's parts, without the running sums they were added to
        parts = [(g["grad_sum_next"] - x["grad_sum"], r["grad_sum_next"] - x["grad_sum"]) for g, r, x in zip(got, ref, feeds)]
        # dE/dx per pixel is noisier than the latent gradient the optimizer sees (0.998 against 0.9999 on
        # the shapes world): reported, and the gate is that latent gradient, G's VJP of each part through the
        # float32 update graph (velocity_next with zero state is the clipped dE/dmeans)
        report["chunk image gradient cosine"] = min(cosine(g, r) for g, r in parts)
        update32 = path32.with_name("update.onnx")
        if not update32.is_file():
            raise ValidationError(f"{path16.name}: the FP16 check of energy_grad needs update.onnx beside it "
                                  "(export order: update before energy_grad)")
        update_feeds = [{k: v.numpy() for k, v in x.items()} for x in _feeds(p, graph_spec(p, "update"), True)]
        through = run_onnx(update32, [{**u, "grad_sum": part} for u, pair in zip(update_feeds, parts) for part in pair])
        report["chunk latent gradient cosine"] = min(cosine(through[2 * i]["velocity_next"], through[2 * i + 1]["velocity_next"])
                                                     for i in range(len(parts)))
        checks.append(("chunk latent gradient cosine", report["chunk latent gradient cosine"], FP16_GRAD_COSINE, "min"))
        report["chunk energy rel err"] = max(rel_err(g["energy_sum_next"] - x["energy_sum"], r["energy_sum_next"] - x["energy_sum"])
                                             for g, r, x in zip(got, ref, feeds))
        checks.append(("chunk energy rel err", report["chunk energy rel err"], FP16_ENERGY_RTOL, "max"))
    elif spec.name in ("step", "update"):
        for o in ("velocity_next", "adam_m_next"):  # the clipped gradients g and (1 - b1) g (zero state)
            report[f"{o} cosine"] = min(cosine(g[o], r[o]) for g, r in zip(got, ref))
            checks.append((f"gradient cosine ({o})", report[f"{o} cosine"], FP16_GRAD_COSINE, "min"))
        # adam_v_next = (1 - b2) g^2 comes from the same g in float32: reported, not a second gate
        report["adam_v_next cosine"] = min(cosine(g["adam_v_next"], r["adam_v_next"]) for g, r in zip(got, ref))
        for o in ("means", "logits"):
            # The update itself (no SGLD noise here): the latents are ~100x their update, so a relative
            # error of means_next alone passes even with the update's sign reversed.
            report[f"{o} update cosine"] = min(cosine(g[f"{o}_next"] - x[o], r[f"{o}_next"] - x[o])
                                               for g, r, x in zip(got, ref, feeds))
            checks.append((f"{o}_next rel err", report[f"{o}_next"], FP16_RTOL, "max"))
        checks.append(("means update cosine", report["means update cosine"], FP16_GRAD_COSINE, "min"))
        # the logits' update: reported as a cosine, gated by its descent (FP16_ADAM_STEP_DESCENT);
        # adam_m_next = (1 - b1) g with zero state, so the float32 graph's gives g's direction
        report["logits update descent"] = min(descent(g["logits_next"] - x["logits"], r["logits_next"] - x["logits"],
                                                      r["adam_m_next"]) for g, r, x in zip(got, ref, feeds))
        checks.append(("logits update descent", report["logits update descent"], FP16_ADAM_STEP_DESCENT, "min"))
        if any(not np.array_equal(g["step_next"], r["step_next"]) for g, r in zip(got, ref)):
            raise ValidationError(f"{path16.name}: step_next differs from the float32 graph's (it is step + 1)")
    else:
        for o in spec.outputs:
            if o != "energy":
                checks.append((f"{o} rel err", report[o], FP16_RTOL, "max"))
    report["within_tolerance"] = True
    for what, value, bound, kind in checks:
        if (value > bound) if kind == "max" else (value < bound):
            if strict:
                raise ValidationError(f"{path16.name}: {what} {value:.4g} is outside the FP16 tolerance {bound}; "
                                      "export with --no-fp16, or keep more of the graph in float32 (export/fp16.py)")
            report["within_tolerance"] = False
    return report
