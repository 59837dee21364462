"""The graph contract, declared once: every graph a pipeline can have, its tensors (name, dtype, shape,
meaning), which axes are dynamic, when a pipeline has it, and which pipeline parts it is computed from.

The exporter traces each graph with these input and output names and dynamic axes, and refuses an
export that fixed a dynamic axis (export/graphs.py adds the torch function and example inputs of each);
the bundle loader requires the graphs a pipeline must have and checks each graph's input and output
names; the torch backend runs the same functions by these names; engines are built for the dynamic
axes. Shapes, dtypes and meanings are documentation here (the manifest records the exported ones).

Shapes name their axes. Dynamic (one engine profile each): B = batch, A = copies (augmented copies per
image), K = components (mixture components; sample mode and prior init run K = 1). Fixed per pipeline:
d_c = condition size, D = latent size, L = the tokenizer's context, S = the image encoder's input size,
C = image channels, H = image size. All floating tensors are float32 at the interface (FP16 lives inside
the graphs), tokens are int64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .settings import HPARAM_NAMES

BATCH, COPIES, COMPONENTS = "batch", "copies", "components"
DYNAMIC_AXES = (BATCH, COPIES, COMPONENTS)
# Fixed axes, by name: what a PipelineInfo field gives each (bundle manifests record the numbers).
COND, LATENT, CONTEXT, PIXELS, CHANNELS, SIZE = "cond_dim", "latent_dim", "context", "pixel_size", "channels", "size"

# The Langevin state, in the step graph's input order (export/step.py has the update equations).
STATE_NAMES = ("means", "logits", "velocity", "adam_m", "adam_v", "step")
AUG_DIM = 8  # DiffAugment numbers per copy, u ~ U[0, 1) (layout: export/augment.py)
# u that leaves an image unchanged (brightness +0, saturation x1, contrast x1, shift 0, resize x1, the
# cutout square pushed off the image): copies = 0 runs as one such copy.
IDENTITY_AUG = (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0, 2.0)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str | int, ...]  # axis names (above) or fixed sizes
    meaning: str
    dtype: str = "float32"


@dataclass(frozen=True)
class GraphSpec:
    name: str
    summary: str
    inputs_: tuple[TensorSpec, ...]
    outputs_: tuple[TensorSpec, ...]
    parts: tuple[str, ...]  # the pipeline.json parts (weights, config) the graph is computed from
    tensors: dict[str, TensorSpec] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "tensors", {t.name: t for t in self.inputs_ + self.outputs_})

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs_)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs_)

    @property
    def dynamic(self) -> dict[str, dict[int, str]]:
        """input name -> {axis: dynamic axis name}, for inputs with dynamic axes."""
        out = {t.name: {i: a for i, a in enumerate(t.shape) if a in DYNAMIC_AXES} for t in self.inputs_}
        return {k: v for k, v in out.items() if v}


MIXTURE = (BATCH, COMPONENTS, LATENT)
_CONDITION_IN = TensorSpec("condition", (BATCH, COND), "the condition c: a unit CLIP embedding or a one-hot class")
_TRANSLATOR_OUT = (
    TensorSpec("logits", (BATCH, COMPONENTS), "mixture logits pi"),
    TensorSpec("means", MIXTURE, "mixture means mu_k, inside the latent bounds"),
    TensorSpec("std", (LATENT,), "the mixture's shared standard deviation per latent dimension"),
)
_AUG_IN = TensorSpec("aug_noise", (BATCH, COPIES, AUG_DIM), "DiffAugment numbers u ~ U[0, 1) per copy")
_STATE_MEANING = {
    "means": "mixture means (sample mode: K = 1, the latent itself)",
    "logits": "mixture logits, one copy per latent dimension",
    "velocity": "SGLD momentum buffer of the means",
    "adam_m": "Adam's first moment of the logits",
    "adam_v": "Adam's second moment of the logits",
    "step": "steps already taken (Adam's bias correction)",
}


_HPARAM_MEANING = {
    "latent_lr": "SGLD step size on the means (eta)",
    "momentum": "SGLD momentum (beta)",
    "noise_std": "std of the SGLD noise added to the means after each step (not scaled by eta)",
    "logits_lr": "Adam step size on the logits",
    "clip_norm": "per-sample gradient norm clip, means and logits separately",
    "adam_eps": "Adam's epsilon",
}


def _state(suffix: str = "") -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n + suffix, (1,) if n == "step" else MIXTURE, _STATE_MEANING[n]) for n in STATE_NAMES)


def _translator(name: str, summary: str) -> GraphSpec:
    return GraphSpec(name, summary, (_CONDITION_IN,), _TRANSLATOR_OUT, (name,))


TEXT_ENCODER = GraphSpec(
    "text_encoder", "prompt tokens -> the condition (CLIP text embedding, unit norm)",
    (TensorSpec("tokens", (BATCH, CONTEXT), "token ids, end token then zero padding", "int64"),),
    (TensorSpec("condition", (BATCH, COND), "unit-norm text embedding"),), ("condition_model",))
IMAGE_ENCODER = GraphSpec(
    "image_encoder", "preprocessed pixels -> the condition (CLIP image embedding, unit norm)",
    (TensorSpec("pixels", (BATCH, 3, PIXELS, PIXELS), "RGB in [0, 1], resized and centre-cropped; the graph "
                "applies the manifest's image_input mean/std itself"),),
    (TensorSpec("condition", (BATCH, COND), "unit-norm image embedding"),), ("condition_model",))
TRANSLATOR = _translator("translator", "condition -> Gaussian mixture over the latent")
IMAGE_TRANSLATOR = _translator("image_translator", "image condition -> Gaussian mixture (trained without "
                                                   "condition noise)")
GENERATOR = GraphSpec(
    "generator", "latent -> images",
    (TensorSpec("latent", (BATCH, LATENT), "G's latent z (StyleGAN2: w)"),),
    (TensorSpec("images", (BATCH, CHANNELS, SIZE, SIZE), "images in [-1, 1]"),), ("generator",))
_ENERGY_PARTS = ("generator", "condition_model", "aesthetic", "augment")
_AESTHETIC_WEIGHT = TensorSpec("aesthetic_weight", (1,), "alpha of the aesthetic term")
_AESTHETIC_OUT = TensorSpec("aesthetic", (BATCH,), "aesthetic score of the final latent")


def energy_graph(aesthetic: bool) -> GraphSpec:
    return GraphSpec(
        "energy", "E(z, c) of a latent: minus the mean cosine of the copies' embeddings with c",
        (TensorSpec("latent", (BATCH, LATENT), "G's latent"), _CONDITION_IN, _AUG_IN),
        (TensorSpec("energy", (BATCH,), "similarity term of E"),) + ((_AESTHETIC_OUT,) if aesthetic else ()),
        _ENERGY_PARTS)


def step_graph(aesthetic: bool) -> GraphSpec:
    return GraphSpec(
        "step", "one Langevin step: E, its gradient and the SGLD / Adam update of the state",
        _state() + (_CONDITION_IN, _AUG_IN,
                    TensorSpec("sgld_noise", MIXTURE, "standard normal noise added to the means"))
        + tuple(TensorSpec(n, (1,), _HPARAM_MEANING[n]) for n in HPARAM_NAMES)
        + ((_AESTHETIC_WEIGHT,) if aesthetic else ()),
        _state("_next") + (TensorSpec("energy", (BATCH,), "E of the input state"),),
        _ENERGY_PARTS)


_IMAGE = (BATCH, CHANNELS, SIZE, SIZE)
_GRAD_SUM = ("s dE/dx summed over the chunks so far, s = 1024 / (1 + alpha |w|) (1024 without an aesthetic "
             "head; the step's loss scale); zeros before the first chunk")


def energy_grad_graph(aesthetic: bool) -> GraphSpec:
    return GraphSpec(
        "energy_grad", "chunked step, per chunk of copies: the chunk's share of E and of s dE/dx, added to the "
                       "running sums",
        (TensorSpec("images", _IMAGE, "x = G(z') of the state's mixed latent (the generator graph's output)"),
         _CONDITION_IN,
         TensorSpec("aug_noise", (BATCH, COPIES, AUG_DIM), "DiffAugment numbers u ~ U[0, 1) of this chunk's copies"),
         TensorSpec("copies", (1,), "A, the step's copies in all chunks (each copy adds 1/A of its energy)"),
         TensorSpec("grad_sum", _IMAGE, _GRAD_SUM),
         TensorSpec("energy_sum", (BATCH,), "E summed over the chunks so far; zeros before the first chunk"))
        + ((_AESTHETIC_WEIGHT,) if aesthetic else ()),
        (TensorSpec("grad_sum_next", _IMAGE, "grad_sum plus this chunk's part"),
         TensorSpec("energy_sum_next", (BATCH,), "energy_sum plus this chunk's part; after the last chunk, E "
                                                  "of the step's input state")),
        ("condition_model", "aesthetic", "augment"))


def update_graph(aesthetic: bool) -> GraphSpec:
    return GraphSpec(
        "update", "chunked step, last: G's backward from the summed s dE/dx (its forward recomputed), then the "
                  "SGLD / Adam update of the state",
        _state() + (TensorSpec("grad_sum", _IMAGE, "s dE/dx after the last chunk (energy_grad's grad_sum_next)"),
                    TensorSpec("sgld_noise", MIXTURE, "standard normal noise added to the means"))
        + tuple(TensorSpec(n, (1,), _HPARAM_MEANING[n]) for n in HPARAM_NAMES)
        + ((_AESTHETIC_WEIGHT,) if aesthetic else ()),
        _state("_next") + (TensorSpec("latent_next", (BATCH, LATENT), "z' = sum_k softmax(logits_next) means_next: "
                                                                     "the next step's generator input"),),
        ("generator", "aesthetic"))


GRAPHS = ("text_encoder", "image_encoder", "translator", "image_translator", "generator", "energy", "step",
          "energy_grad", "update")
REQUIRED = ("translator", "generator", "energy", "step")  # every pipeline; text pipelines add text_encoder
# The chunked step (generator, then energy_grad per chunk of copies, then update): optional, a bundle
# exported before it has only the step graph, whose memory grows with A (tr0n_rt/memory.py).
CHUNKED_STEP = ("generator", "energy_grad", "update")


def pipeline_graphs(condition: str, image_input: bool = False, image_translator: bool = False,
                    aesthetic: bool = False) -> list[GraphSpec]:
    """The graphs of a pipeline, in export order: text_encoder for text pipelines, image_encoder for CLIP
    pipelines that take image conditions, image_translator when one was trained; an aesthetic head adds
    the step's aesthetic_weight input and the energy's aesthetic output."""
    specs = [TEXT_ENCODER] if condition == "text" else []
    specs += [IMAGE_ENCODER] if image_input else []
    specs += [TRANSLATOR] + ([IMAGE_TRANSLATOR] if image_translator else [])
    return specs + [GENERATOR, energy_graph(aesthetic), step_graph(aesthetic), update_graph(aesthetic),
                    energy_grad_graph(aesthetic)]  # update first: energy_grad's FP16 check runs update (export/validate.py)


def graph_parts() -> dict[str, tuple[str, ...]]:
    """graph name -> the pipeline parts it is computed from, for every graph a pipeline may have."""
    return {s.name: s.parts for s in pipeline_graphs("text", image_input=True, image_translator=True, aesthetic=True)}


def required_graphs(condition: str) -> tuple[str, ...]:
    return REQUIRED + (("text_encoder",) if condition == "text" else ())


def sampling_graphs(condition: str) -> tuple[str, ...]:
    """The graphs sampling from prompts or classes runs (image conditions add image_encoder and the
    image translator)."""
    return (("text_encoder",) if condition == "text" else ()) + ("translator", "step", "energy", "generator")
