"""The Langevin step replayed from CUDA graphs: per step shape, which buffers, which graph, how often.
Engine-agnostic: a backend hands in how to allocate a shape's buffers and how to bind and enqueue one
step on them (TensorRT: tensorrt.py); the device (cuda.py) captures and replays.

The step's CUDA graphs ("bind once, replay many"):
    TensorRT reads inputs and writes outputs at the addresses bound when a graph is captured, and an
    engine may not write its outputs over its own inputs. So each step shape gets two state sets, A and
    B, and two graphs: graph 0 reads A and writes B, graph 1 reads B and writes A (`PingPong`). The
    state a step returns is (a view of) the set it wrote; passed back in, it is recognised by address
    and the other graph is replayed: no copy between steps, only a pointer swap (which graph). State
    from anywhere else is copied into A first. Inputs that change every step (noise, condition,
    hyperparameters) have one fixed buffer each and are copied in before each replay; the energy
    output is cloned after it, because the sampler keeps every step's energy.
    Consequence: a step's returned state stays valid until the second step after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cuda import put


def shape_key(shapes: dict) -> tuple[int, int, int]:
    """(batch, copies, components) of a step call, from its input shapes: the key of a captured graph."""
    b, k, _ = shapes["means"]
    return int(b), int(shapes["aug_noise"][1]), int(k)


@dataclass
class PingPong:
    """Two state sets for one step shape: graph p reads sets[p] and writes sets[1 - p].

    state: input name -> output name (means -> means_next, ...); fixed: inputs and outputs that have one
    buffer for both graphs (noise, condition, hparams; energy)."""

    state: dict[str, str]
    fixed: tuple[str, ...]
    sets: list[dict] = field(default_factory=list)  # two dicts: input name -> buffer
    shared: dict = field(default_factory=dict)  # fixed name -> buffer

    def bindings(self, parity: int) -> dict:
        """Tensor name -> buffer for graph `parity`."""
        src, dst = self.sets[parity], self.sets[1 - parity]
        return {**{n: src[n] for n in self.state}, **{o: dst[n] for n, o in self.state.items()}, **self.shared}

    def parity_of(self, device, inputs: dict) -> int | None:
        """p if every state input already lies at sets[p]'s addresses (our last output), else None."""
        for p, bufs in enumerate(self.sets):
            if all(device.owns(inputs[n]) and device.ptr(inputs[n]) == device.ptr(bufs[n]) for n in self.state):
                return p
        return None


@dataclass
class GraphStats:
    """What was captured and replayed, per (batch, copies, components): for tests and benchmarks."""

    captures: dict = field(default_factory=dict)
    replays: dict = field(default_factory=dict)
    copies_in: int = 0  # steps whose state had to be copied into set A (the first step of each sample)
    eager: int = 0  # steps run without a graph (capture off, or failed)
    capture_errors: dict = field(default_factory=dict)  # shape -> why it runs eagerly

    def as_dict(self) -> dict:
        """Keys (batch, copies, components), or with a fourth number the chunk of a chunked step."""
        keys = sorted(set(self.captures) | set(self.replays))
        return {"graphs": [{"batch": key[0], "copies": key[1], "components": key[2],
                            **({"chunk": key[3]} if len(key) > 3 else {}), "captures": self.captures.get(key, 0),
                            "replays": self.replays.get(key, 0)} for key in keys],
                "state_copies": self.copies_in, "eager_steps": self.eager,
                "capture_errors": {str(k): v for k, v in self.capture_errors.items()}}


class StepGraphs:
    """Runs a step through CUDA graphs: two per shape (PingPong), each captured after a warm-up enqueue.

    alloc(key) -> {tensor name: (shape, dtype)} of every step input and output at shape key (batch padded
    to a built profile). prepare(key, bindings, slot) binds the execution context of `slot` (0 or 1, one
    per graph) to these buffers with host-side calls that are never captured, and returns `enqueue()`,
    which queues the step on device.stream_handle(). batched: tensor names whose axis 0 is the batch.
    check(outputs) -> False when a result must be recomputed (FP16 guard); fallback(key, bindings)
    recomputes it into the same output buffers.
    """

    def __init__(self, device, state: dict[str, str], fixed_inputs: tuple[str, ...], fixed_outputs: tuple[str, ...],
                 batched: set[str], prepare, alloc, use_graphs: bool = True, check=None, fallback=None):
        self.device, self.state, self.batched = device, state, set(batched)
        self.fixed_inputs, self.fixed_outputs = tuple(fixed_inputs), tuple(fixed_outputs)
        self.prepare, self.alloc = prepare, alloc
        self.use_graphs, self.check, self.fallback = use_graphs, check, fallback
        self.entries: dict = {}
        self.stats = GraphStats()
        self.fallbacks = 0  # steps recomputed because check() refused them

    def entry(self, key):
        """The buffers and the two graphs of one shape, made on first use."""
        if key in self.entries:
            return self.entries[key]
        specs = self.alloc(key)
        pp = PingPong(self.state, self.fixed_inputs + self.fixed_outputs)
        pp.sets = [{n: self.device.empty(*specs[n]) for n in self.state} for _ in range(2)]
        pp.shared = {n: self.device.empty(*specs[n]) for n in pp.fixed}
        graphs = [None, None]
        if self.use_graphs:
            try:
                for p in (0, 1):  # one enqueue outside capture first: TensorRT finishes deferred set-up there
                    graphs[p] = self.device.capture(self.prepare(key, pp.bindings(p), p), warmup=1)
                self.stats.captures[key] = 2
            except Exception as e:  # an engine or op that cannot be captured: run this shape eagerly
                graphs = [None, None]
                self.stats.capture_errors[key] = f"{type(e).__name__}: {e}"
        self.entries[key] = (pp, graphs)
        return self.entries[key]

    def run(self, key, inputs: dict, rows: int) -> dict:
        """inputs: every step input (buffers of this device, or numpy) with `rows` real rows; key[0] is the
        padded batch. Returns the outputs' real rows: state as views into the set just written (valid until
        the step after next), the other outputs (energy) cloned."""
        dev = self.device
        pp, graphs = self.entry(key)
        p = pp.parity_of(dev, inputs)
        if p is None:  # state from elsewhere (a new sample): into set A, then graph 0
            p = 0
            self.stats.copies_in += 1
            for n in self.state:
                put(dev, self._real(pp.sets[0][n], n, rows), inputs[n])
        for n in self.fixed_inputs:
            put(dev, self._real(pp.shared[n], n, rows), inputs[n])
        bindings = pp.bindings(p)
        if graphs[p] is not None:
            graphs[p].replay()
            self.stats.replays[key] = self.stats.replays.get(key, 0) + 1
        else:
            self.prepare(key, bindings, p)()
            self.stats.eager += 1
        names = list(self.state.values()) + list(self.fixed_outputs)
        out = {o: self._real(bindings[o], o, rows) for o in names}
        if self.check is not None and self.fallback is not None and not self.check(out):
            self.fallbacks += 1
            self.fallback(key, bindings, p)
        return {o: dev.clone(b) if o in self.fixed_outputs else b for o, b in out.items()}

    def _real(self, buf, name: str, rows: int):
        return self.device.rows(buf, rows) if name in self.batched else buf
