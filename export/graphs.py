"""Each graph of a pipeline as a torch function of named tensors, with example inputs and ONNX export.
The contract (names, shapes, dynamic axes, parts) is tr0n_rt/graphs.py's, read by the runtime from the
bundle manifest, so exporter and runtime never disagree.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from tr0n_rt.graphs import AUG_DIM, BATCH, COMPONENTS, COPIES, STATE_NAMES, GraphSpec, pipeline_graphs
from tr0n_rt.settings import HPARAM_NAMES, SamplingConfig

from .gradient import trace
from .pipeline import TorchPipeline
from .step import copies_energy_grad, langevin_step, mix, update_from_image_grad


def graph_specs(p: TorchPipeline) -> list[GraphSpec]:
    """The pipeline's graphs (tr0n_rt.graphs.pipeline_graphs for this pipeline's parts)."""
    return pipeline_graphs(p.condition, image_input=p.image_conditioning, image_translator=p.image_translator is not None,
                           aesthetic=p.aesthetic is not None)


def graph_function(p: TorchPipeline, name: str):
    """The torch function a graph computes: positional tensors in spec order -> tuple of tensors."""
    energy = p.energy()
    bound = p.generator.latent.bounds

    def text_encoder(tokens):
        return (p.condition_model.encode_text(tokens),)

    def image_encoder(pixels):
        return (p.condition_model.encode_pixels(pixels),)

    def translator_of(module):
        def translator(condition):
            out = module(condition)
            return out["logits"], out["means"], out["std"]

        return translator

    def generator(latent):
        return (p.generator(latent),)

    def energy_fn(latent, condition, aug_noise):
        return tuple(energy.graph_outputs(latent, condition, aug_noise).values())  # spec order: energy, aesthetic

    # make_fx traces exactly the arguments a function declares: the hyperparameters one by one (HPARAM_NAMES)
    def step(means, logits, velocity, adam_m, adam_v, step, condition, aug_noise, sgld_noise,
             latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps):
        state = dict(zip(STATE_NAMES, (means, logits, velocity, adam_m, adam_v, step)))
        hparams = dict(zip(HPARAM_NAMES, (latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps)))
        new, e = langevin_step(energy, state, condition, aug_noise, sgld_noise, hparams, bound)
        return tuple(new[n] for n in STATE_NAMES) + (e,)

    def aesthetic_step(means, logits, velocity, adam_m, adam_v, step, condition, aug_noise, sgld_noise,
                       latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps, aesthetic_weight):
        state = dict(zip(STATE_NAMES, (means, logits, velocity, adam_m, adam_v, step)))
        hparams = dict(zip(HPARAM_NAMES, (latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps)))
        new, e = langevin_step(energy, state, condition, aug_noise, sgld_noise, hparams, bound, aesthetic_weight)
        return tuple(new[n] for n in STATE_NAMES) + (e,)

    def energy_grad(images, condition, aug_noise, copies, grad_sum, energy_sum):
        return aesthetic_energy_grad(images, condition, aug_noise, copies, grad_sum, energy_sum, None)

    # Images as inputs: the trace gives every input axis a symbol, and the image axes must stay numbers (the
    # encoder's resize and DiffAugment's matrices are built from them), so they are reshaped to G's own.
    image_shape = (p.generator.channels, p.generator.image_size, p.generator.image_size)

    def aesthetic_energy_grad(images, condition, aug_noise, copies, grad_sum, energy_sum, aesthetic_weight):
        images, grad_sum = images.reshape(-1, *image_shape), grad_sum.reshape(-1, *image_shape)
        part, g = copies_energy_grad(energy, images, condition, aug_noise, copies, aesthetic_weight)
        return grad_sum + g, energy_sum + part

    def update(means, logits, velocity, adam_m, adam_v, step, grad_sum, sgld_noise,
               latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps):
        return aesthetic_update(means, logits, velocity, adam_m, adam_v, step, grad_sum, sgld_noise,
                                latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps, None)

    def aesthetic_update(means, logits, velocity, adam_m, adam_v, step, grad_sum, sgld_noise,
                         latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps, aesthetic_weight):
        state = dict(zip(STATE_NAMES, (means, logits, velocity, adam_m, adam_v, step)))
        hparams = dict(zip(HPARAM_NAMES, (latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps)))
        new, latent = update_from_image_grad(energy, state, grad_sum.reshape(-1, *image_shape), sgld_noise, hparams,
                                             bound, aesthetic_weight)
        return tuple(new[n] for n in STATE_NAMES) + (latent,)

    functions = {"text_encoder": text_encoder, "image_encoder": image_encoder, "translator": translator_of(p.translator),
                 "generator": generator, "energy": energy_fn, "step": aesthetic_step if p.aesthetic is not None else step,
                 "energy_grad": aesthetic_energy_grad if p.aesthetic is not None else energy_grad,
                 "update": aesthetic_update if p.aesthetic is not None else update}
    if p.image_translator is not None:
        functions["image_translator"] = translator_of(p.image_translator)
    return functions[name]


def example_inputs(p: TorchPipeline, name: str, batch: int = 2, copies: int = 3, seed: int = 0) -> dict:
    """Random inputs of a graph with realistic ranges (batch and copies >= 2 so tracing keeps them symbolic)."""
    g = torch.Generator().manual_seed(seed)
    d_c, d = p.translator.config.cond_dim, p.generator.latent.dim
    k = p.translator.config.num_components
    if p.condition == "text":
        cond = torch.nn.functional.normalize(torch.randn(batch, d_c, generator=g), dim=1)
    else:
        cond = torch.softmax(3 * torch.randn(batch, d_c, generator=g), dim=1)
    aug = torch.rand(batch, copies, AUG_DIM, generator=g)
    if name == "text_encoder":
        ctx = p.condition_model.context_length
        vocab = p.tokenizer.vocab_size if p.tokenizer is not None else 49408
        tokens = torch.randint(1, vocab - 2, (batch, ctx), generator=g)
        lengths = torch.randint(2, ctx, (batch,), generator=g)
        tokens[torch.arange(batch), lengths] = vocab - 1  # the end token (the highest id) somewhere
        tokens[torch.arange(ctx)[None, :] > lengths[:, None]] = 0
        return {"tokens": tokens}
    if name in ("translator", "image_translator"):
        return {"condition": cond}
    if name == "image_encoder":
        s = p.condition_model.input_size
        return {"pixels": torch.rand(batch, 3, s, s, generator=g)}
    if name == "generator":
        return {"latent": p.generator.sample_latent(batch, generator=g)}
    if name == "energy":
        return {"latent": p.generator.sample_latent(batch, generator=g), "condition": cond, "aug_noise": aug}
    alpha = {"aesthetic_weight": torch.rand(1, generator=g) + 0.5} if p.aesthetic is not None else {}
    if name == "energy_grad":
        with torch.no_grad():  # realistic images: G of realistic latents
            images = p.generator(p.generator.sample_latent(batch, generator=g))
        return {"images": images, "condition": cond, "aug_noise": aug,
                "copies": torch.tensor([float(copies + 1 + seed % 7)]),  # A > this chunk's copies
                # running sums far smaller than a chunk's part, so that the outputs' errors are the part's
                "grad_sum": 1e-6 * torch.randn(images.shape, generator=g), "energy_sum": -1e-3 * torch.rand(batch, generator=g),
                **alpha}
    k = max(k, 2)  # a traced size of 1 would be specialised (made static)
    means = p.generator.sample_latent(batch * k, generator=g).reshape(batch, k, d)  # realistic latents (w for StyleGAN2)
    if name == "update":
        # s dE/dx as energy_grad gives it at this state's images: white noise instead made the logits'
        # gradient a sum of cancelling terms, ill-conditioned (3e-3 float32 error at real size, not 3e-6)
        x = example_inputs(p, "step", batch, copies, seed)
        alpha = x.get("aesthetic_weight")
        images = p.generator(mix(x["means"], x["logits"])).detach()
        _, grad = copies_energy_grad(p.energy(), images, x["condition"], x["aug_noise"],
                                     torch.tensor([float(copies)]), alpha)
        return {**{n: v for n, v in x.items() if n not in ("condition", "aug_noise")}, "grad_sum": grad.detach()}
    return {
        "means": means, "logits": torch.randn(batch, k, d, generator=g),
        "velocity": 0.1 * torch.randn(batch, k, d, generator=g),
        "adam_m": 1e-3 * torch.randn(batch, k, d, generator=g),
        "adam_v": 1e-6 * torch.rand(batch, k, d, generator=g),
        "step": torch.tensor([float(seed % 50)]),  # distinct per validation case (a random draw could repeat)
        "condition": cond, "aug_noise": aug, "sgld_noise": torch.randn(batch, k, d, generator=g),
        **{n: torch.from_numpy(v) for n, v in SamplingConfig().hparams().items()},  # the paper preset's
        **alpha,
    }


def export_graph(p: TorchPipeline, spec: GraphSpec, path: str | Path, opset: int = 18) -> Path:
    """Traces the graph's function (autograd included) and writes it as ONNX with dynamic axes: the graph
    at `path`, its weights in `{path.name}.data` beside it (no protobuf past 2 GB is ever serialized;
    onnx.load and ONNX Runtime read the weights back by that relative name)."""
    from torch.export import Dim

    fn = graph_function(p, spec.name)
    inputs = example_inputs(p, spec.name)
    args = tuple(inputs[n] for n in spec.inputs)
    gm = trace(fn, args).eval()
    dims = {BATCH: Dim(BATCH, min=1, max=4096), COPIES: Dim(COPIES, min=1, max=1024),
            COMPONENTS: Dim(COMPONENTS, min=1, max=1024)}
    dynamic = tuple({axis: dims[d] for axis, d in spec.dynamic[n].items()} if n in spec.dynamic else None
                    for n in spec.inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Export into a private folder under the final names (the graph records its weights file by name),
    # then move the weights and the graph into place.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as stage:
        staged = Path(stage) / path.name
        torch.onnx.export(gm, args, str(staged), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                          input_names=list(spec.inputs), output_names=list(spec.outputs), external_data=True,
                          verbose=False)
        data = staged.with_name(f"{path.name}.data")
        if data.exists():
            os.replace(data, path.with_name(data.name))
        os.replace(staged, path)
    return path
