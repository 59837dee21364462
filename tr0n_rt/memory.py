"""Peak memory of the Langevin loop, predicted from a bundle's counted bytes, and the plan that fits a budget.

A bundle's manifest gives, per graph of the loop and per precision (field `activations` of the graph's
entry, counted by the exporter from the graph file: export/memory_count.py), rows (c0, c1, c2, c3) in bytes: the graph's live activations while it runs, under a
run-in-file-order liveness model, are at most max over rows of c0 + c1 b + c2 a + c3 b a at batch b and
copies a (the `components` axis fixed at the mixture's K). Weights are the graph files' bytes.

The loop runs one of two paths (export/step.py):
    step     one graph per step; its activations hold G's and all A copies' encoder activations at once:
             peak = W(step path) + max(act(step, b, A), act(energy, b, A), act(generator, b))
    chunked  generator, then energy_grad on chunks of m copies, then update (G's forward recomputed):
             peak = W(chunked path) + max(act(generator, b), act(energy_grad, b, m), act(update, b),
                                          act(energy, b, m))
             (the final energy runs on chunks of m copies too)
act: the counted bytes times the backend's activation_factor, plus its fixed_overhead per run (ONNX
Runtime on the CPU: 1.8 and 1 GiB, measured, on the float32 counts for FP16 graphs too, which it runs with
casts to float32; benchmarks/RESULTS.md, "Memory"). W: the weights of every graph the path keeps loaded (translator and
encoders included). The max assumes
that one graph's activations are freed before the next runs (ONNX Runtime: the sessions share one arena,
backends/onnxruntime.py; TensorRT: one activation buffer for all the step's engines). What the runtime
itself adds (the interpreter, ONNX Runtime's code and pre-packed weights) is not counted: the planner
keeps RESERVE of the budget for it; benchmarks/memory.py measures the gap.

The plan: the largest sub-batch b <= batch (batch split into equal parts) that fits, with the step graph
if it fits, else the chunked step with the largest chunk m that fits (chunks balanced: A split into
ceil(A / m) chunks of nearly equal size). A larger batch is preferred to an unchunked step: on a GPU the
batch is the throughput, and the chunked step costs one more generator forward per step.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from .errors import ConfigError, Tr0nError

STEP, CHUNKED = "step", "chunked"
STEP_PATH = ("step", "energy", "generator")
CHUNKED_PATH = ("generator", "energy_grad", "update", "energy")
ENCODERS = ("translator", "image_translator", "text_encoder", "image_encoder")
RESERVE = 0.15  # of a budget, kept for what the counts leave out (module docstring)
DEFAULT_FRACTION = 0.8  # default budget: this much of the memory available when the sampler opens
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


class MemoryBudgetError(Tr0nError):
    """No batch and chunk size fits the memory budget."""


@dataclass(frozen=True)
class Plan:
    batch: int  # rows per sub-batch
    chunk: int | None  # copies per energy_grad run; None: the one-graph step
    peak_bytes: float  # predicted, RESERVE not included
    budget_bytes: float | None  # None: no budget (nothing planned)
    counted: bool  # False: the bundle has no memory counts, the plan is the default one

    @property
    def path(self) -> str:
        return STEP if self.chunk is None else CHUNKED

    def as_dict(self, rows: int | None = None) -> dict:
        """rows: the batch the plan was made for (sub_batches = how many parts it ran in)."""
        return {"path": self.path, "batch": self.batch, "chunk": self.chunk,
                "sub_batches": -(-rows // self.batch) if rows else 1,
                "predicted_peak_gib": round(self.peak_bytes / 2**30, 3) if self.counted else None,
                "budget_gib": round(self.budget_bytes / 2**30, 3) if self.budget_bytes else None}


def parse_bytes(text) -> int:
    """'8G', '512 MiB', '1.5gb', 2**30 -> bytes (binary units); ConfigError for anything else."""
    if isinstance(text, bool):
        raise ConfigError(f"a memory size must be a number of bytes or e.g. '8G', got {text!r}")
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text)[:40])
        if not m or m.group(2).lower() not in UNITS:
            raise ConfigError(f"memory size {str(text)[:40]!r} is not a size: write e.g. 8G, 512M or 1.5GiB")
        value, unit = float(m.group(1)), m.group(2).lower()
    out = value * UNITS[unit]
    if not math.isfinite(out) or out < 2**16 or out > 2**50:
        raise ConfigError(f"memory size {str(text)[:40]!r} is outside 64 KiB .. 1 PiB")
    return int(out)


def available_host_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_of(rows, batch: int, copies: int) -> float:
    """max over rows of c0 + c1 b + c2 a + c3 b a (bytes)."""
    return max((c0 + c1 * batch + c2 * copies + c3 * batch * copies for c0, c1, c2, c3 in rows), default=0.0)


class MemoryModel:
    """A bundle's counted bytes: weights per graph file, activation rows per graph (module docstring)."""

    def __init__(self, manifest: dict, precision: str = "fp32", graphs=None, activation_factor: float = 1.0,
                 counted_as: str | None = None, fixed_overhead: float = 0.0):
        """graphs: the graphs the backend can run (default: every graph of the bundle). activation_factor:
        what the backend measurably allocates per counted activation byte (its own layouts, workspaces and
        arena; the backend's memory_model says where its figure comes from). counted_as: whose activation
        counts to use (default: `precision`'s; ONNX Runtime runs FP16 graphs on the CPU mostly in float32).
        fixed_overhead: bytes the backend allocates for a run whatever its size (added to every peak)."""
        self.precision, self.activation_factor, self.fixed_overhead = precision, activation_factor, fixed_overhead
        counted_as = counted_as or precision
        self.rows = {g: e["activations"].get(counted_as) or e["activations"]["fp32"]
                     for g, e in manifest.get("graphs", {}).items() if e.get("activations")}
        files = manifest.get("files", {})
        self.weights = {}
        for graph, entry in manifest.get("graphs", {}).items():
            name = entry["files"].get(precision) or entry["files"]["fp32"]
            data = [f for f in files if f.startswith(name + ".data")]  # external weights beside the graph
            self.weights[graph] = sum(files.get(f, {}).get("bytes", 0) for f in [name, *data])
        self.graphs = set(manifest.get("graphs", {}) if graphs is None else graphs)

    @property
    def counted(self) -> bool:
        return all(g in self.rows for g in STEP_PATH)

    @property
    def chunked(self) -> bool:
        """Whether the bundle has the chunked step's graphs, counted."""
        return all(g in self.graphs and g in self.rows for g in CHUNKED_PATH)

    def resident(self, path: str) -> float:
        graphs = (STEP_PATH if path == STEP else CHUNKED_PATH) + ENCODERS
        return float(sum(self.weights.get(g, 0) for g in graphs))

    def act(self, graph: str, batch: int, copies: int = 1) -> float:
        return self.activation_factor * peak_of(self.rows[graph], batch, copies)

    def peak(self, batch: int, copies: int, chunk: int | None) -> float:
        """Predicted peak bytes of the loop (module docstring) at `batch` rows and A = copies."""
        a = max(copies, 1)
        if chunk is None:
            return self.fixed_overhead + self.resident(STEP) + max(self.act("step", batch, a), self.act("energy", batch, a),
                                             self.act("generator", batch))
        return self.fixed_overhead + self.resident(CHUNKED) + max(self.act("generator", batch),
                                                                  self.act("energy_grad", batch, chunk),
                                            self.act("update", batch), self.act("energy", batch, chunk))

    def breakdown(self, batch: int, copies: int, chunk: int | None) -> dict:
        """Where the predicted bytes go, for reports."""
        a = max(copies, 1)
        graphs = ("step", "energy", "generator") if chunk is None else CHUNKED_PATH
        sizes = {"step": (batch, a), "energy": (batch, a if chunk is None else chunk),
                 "energy_grad": (batch, chunk or a), "update": (batch, 1), "generator": (batch, 1)}
        return {"weights": self.resident(STEP if chunk is None else CHUNKED), "fixed_overhead": self.fixed_overhead,
                **{f"activations_{g}": self.act(g, *sizes[g]) for g in graphs}}


def balanced_chunk(copies: int, largest: int) -> int:
    """Chunks of at most `largest` copies, as few as possible, of nearly equal size: A = 50, 30 -> 25."""
    n = math.ceil(copies / largest)
    return math.ceil(copies / n)


def plan(model: MemoryModel, budget: float | None, batch: int, copies: int, chunk: int | None = None) -> Plan:
    """The plan for `batch` rows at A = copies within `budget` bytes (module docstring). budget None: no
    planning, the whole batch in one step graph (or in chunks of `chunk` when given). chunk given with a
    budget: that chunk size, and the batch planned around it. Raises MemoryBudgetError when even one row
    in chunks of one copy does not fit, ConfigError for a chunk the bundle cannot run."""
    a = max(copies, 1)
    if chunk is not None:
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1 copy, got {chunk}")
        if "energy_grad" not in model.graphs or "update" not in model.graphs:
            raise ConfigError("this bundle has no chunked step (graphs energy_grad and update): re-export it "
                              "with this tr0n-rt (`tr0n-rt export --pipeline DIR`)")
        chunk = min(chunk, a)
    counted = model.counted and (chunk is None or model.chunked)
    if budget is None or not counted:
        peak = model.peak(batch, copies, chunk) if counted else 0.0
        return Plan(batch, chunk, peak, budget, counted)
    usable = budget * (1 - RESERVE)
    for parts in range(1, batch + 1):
        b = math.ceil(batch / parts)
        if parts > 1 and b == math.ceil(batch / (parts - 1)):
            continue  # the same sub-batch size as the previous split
        if chunk is not None:
            if model.peak(b, copies, chunk) <= usable:
                return Plan(b, chunk, model.peak(b, copies, chunk), budget, True)
            continue
        if model.peak(b, copies, None) <= usable:
            return Plan(b, None, model.peak(b, copies, None), budget, True)
        if model.chunked:
            fits = [m for m in range(a, 0, -1) if model.peak(b, copies, m) <= usable]
            if fits:
                m = balanced_chunk(a, fits[0])
                return Plan(b, m, model.peak(b, copies, m), budget, True)
    smallest = model.peak(1, copies, 1 if model.chunked else None) if chunk is None else model.peak(1, copies, chunk)
    hint = "" if model.chunked else "; this bundle has no chunked step: re-export it with this tr0n-rt"
    raise MemoryBudgetError(
        f"no batch fits the memory budget of {shown(budget)}: one image at {a} copies needs about "
        f"{shown(smallest)} plus {RESERVE:.0%} reserve{hint}. Give a larger budget (--memory-budget), "
        "fewer copies, or the fp16 graphs")


def shown(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: '64 KiB', '1.25 GiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def default_budget(backend) -> float | None:
    """The per-device default: DEFAULT_FRACTION of the memory the backend's device has free now (a GPU's
    free memory, or the host's MemAvailable for CPU backends); None when it cannot be read. TR0N_RT_MEMORY
    overrides it (e.g. 8G)."""
    env = os.environ.get("TR0N_RT_MEMORY")
    if env:
        return float(parse_bytes(env))
    free = backend.memory_free()
    return None if free is None else DEFAULT_FRACTION * free
