"""The StyleGAN2 generator family (W space): shapes, the unfused == fused modulated conv, FIR resampling,
determinism, batch invariance, the mapping prior, config round trip, NVIDIA's conv_clamp, and the traced gradient
in ONNX."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tr0n_rt.errors import ConfigError, ShapeError
from tr0n_rt.export.models.registry import build_generator
from tr0n_rt.export.models.stylegan2 import (StyleGAN2Generator, blur, channels_at, fir_kernel,
                                             upsample2d)

SMALL = {"resolution": 32, "w_dim": 16, "z_dim": 12, "channel_base": 256, "channel_max": 32}


def small_generator(seed: int = 0, **overrides) -> StyleGAN2Generator:
    """A random tiny StyleGAN2 whose noise strengths are nonzero (they start at 0), so noise takes part."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(**{**SMALL, **overrides}).eval().requires_grad_(False)
    for name, p in g.named_parameters():
        if name.endswith("noise_strength"):
            p.fill_(0.3)
    return g


def square_energy_and_grad(g: StyleGAN2Generator):
    """w -> (E, dE/dw) with E = mean of G(w)^2 per image: a stand-in energy whose gradient crosses all of G."""
    def energy_and_grad(w):
        with torch.enable_grad():
            w = w.detach().requires_grad_(True)
            e = g(w).square().mean(dim=(1, 2, 3))
            (grad,) = torch.autograd.grad(e.sum(), w)
        return e.detach(), grad

    return energy_and_grad


def latents(g: StyleGAN2Generator, n: int, seed: int = 1) -> torch.Tensor:
    return g.sample_latent(n, torch.Generator().manual_seed(seed))


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).norm() / b.norm())


def upfirdn2d_reference(x, kernel, up: int, pad: tuple[int, int]):
    """upfirdn2d by its definition: insert up-1 zeros after each sample, pad, convolve with the FIR kernel."""
    b, c, h, w = x.shape
    y = x.new_zeros(b, c, h * up, w * up)
    y[:, :, ::up, ::up] = x
    y = F.pad(y, [pad[0], pad[1], pad[0], pad[1]])
    k = kernel.flip([0, 1])[None, None]  # convolution, not correlation
    y = F.conv2d(y.reshape(b * c, 1, *y.shape[2:]), k)
    return y.reshape(b, c, *y.shape[2:])


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_and_range(batch):
    g = small_generator()
    with torch.no_grad():
        x = g(latents(g, batch))
    assert x.shape == (batch, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.05


@pytest.mark.parametrize("batch", [1, 3])
def test_unfused_modulated_conv_matches_the_fused_grouped_reference(batch):
    g = small_generator()
    w = latents(g, batch)
    b8 = g.synthesis.b8
    x = torch.randn(batch, 32, 4, 4)
    with torch.no_grad():
        for layer, inp in ((b8.conv0, x), (b8.conv1, torch.randn(batch, 32, 8, 8)), (b8.torgb, x)):
            ours, ref = layer.modulated_conv(inp, w), layer.modulated_conv(inp, w, fused=True)
            assert rel_err(ours, ref) <= 1e-5, layer
        raw, raw_ref = g.synthesis(w), g.synthesis(w, fused=True)  # whole network, before the clamp
    assert rel_err(raw, raw_ref) <= 1e-5


def test_fir_blur_and_upsample_match_upfirdn2d():
    x = torch.randn(2, 5, 7, 7)
    k = fir_kernel()
    torch.testing.assert_close(blur(x, k, pad=1), upfirdn2d_reference(x, k, up=1, pad=(1, 1)))
    up = upsample2d(x, fir_kernel(gain=4.0))
    assert up.shape == (2, 5, 14, 14)
    torch.testing.assert_close(up, upfirdn2d_reference(x, fir_kernel(gain=4.0), up=2, pad=(2, 1)))
    # gain 4 keeps a constant image constant (away from the zero-padded border)
    ones = upsample2d(torch.ones(1, 1, 6, 6), fir_kernel(gain=4.0))
    torch.testing.assert_close(ones[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))


def test_gradient_wrt_w_is_nonzero_and_finite():
    g = small_generator()
    w = latents(g, 2).requires_grad_(True)
    g(w).square().mean().backward()
    assert torch.isfinite(w.grad).all()
    assert w.grad.abs().sum(dim=1).min() > 0


def test_same_w_gives_the_same_image_and_noise_is_fixed():
    g = small_generator()
    w = latents(g, 2)
    with torch.no_grad():
        assert torch.equal(g(w), g(w))
        again = small_generator()  # same seeds: same weights and the same noise images
        assert torch.equal(again(w), g(w))
        other_noise = small_generator(noise_seed=1)
        assert not torch.equal(other_noise.synthesis.b32.conv1.noise_const, g.synthesis.b32.conv1.noise_const)
        silent = StyleGAN2Generator(**{**SMALL, "noise": "none"}).eval()
        missing, unexpected = silent.load_state_dict(g.state_dict(), strict=False)
        assert missing == [] and all("noise" in k for k in unexpected)
        assert not torch.allclose(silent.synthesis(w), g.synthesis(w), atol=1e-3)  # the noise term takes part


def test_image_of_a_sample_does_not_depend_on_the_rest_of_the_batch():
    g = small_generator()
    w = latents(g, 4)
    with torch.no_grad():
        full = g.synthesis(w)
        for i in range(4):
            torch.testing.assert_close(g.synthesis(w[i:i + 1]), full[i:i + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.synthesis(w.flip(0)), full.flip(0), rtol=1e-5, atol=1e-5)


def test_mapping_prior():
    g = small_generator()
    w = latents(g, 5, seed=3)
    assert w.shape == (5, 16) and torch.equal(w, latents(g, 5, seed=3))
    assert torch.equal(g.sample_w(5, torch.Generator().manual_seed(3)), w)
    z = torch.randn(5, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(g.mapping(z), w)
        torch.testing.assert_close(g.mapping(3.0 * z), w)  # z is normalised to unit second moment
    # equalized lr: weights are stored as N(0, 1) / lr_mul and scaled back at run time
    torch.manual_seed(0)
    slow = StyleGAN2Generator(**SMALL, mapping_lr_mul=0.01)
    torch.manual_seed(0)
    fast = StyleGAN2Generator(**SMALL, mapping_lr_mul=1.0)
    assert slow.mapping.fc3.weight.std() > 50 * fast.mapping.fc3.weight.std()
    with torch.no_grad():
        torch.testing.assert_close(slow.mapping(z), fast.mapping(z))


def test_config_round_trip_through_registry():
    g = small_generator(noise_seed=7)
    again = build_generator("stylegan2", g.config())
    assert type(again) is StyleGAN2Generator and again.family == "stylegan2"
    assert again.config() == g.config() and again.latent.dim == 16 and again.image_size == 32
    again.load_state_dict(g.state_dict())  # same layout, same names
    w = latents(g, 2)
    with torch.no_grad():
        assert torch.equal(again.eval()(w), g(w))


def layer_outputs(g: StyleGAN2Generator, w: torch.Tensor, fused: bool = False) -> dict[str, torch.Tensor]:
    """{name: output} of every SynthesisLayer and ToRGB in one synthesis pass."""
    out, hooks = {}, []
    for name, m in g.synthesis.named_modules():
        if name.endswith(("conv0", "conv1", "torgb")):
            hooks.append(m.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o)))
    try:
        with torch.no_grad():
            g.synthesis(w, fused)
    finally:
        for h in hooks:
            h.remove()
    return out


def test_conv_clamp_default_is_off_and_leaves_config_and_outputs_unchanged():
    g = small_generator()
    assert "conv_clamp" not in g.config() and g.synthesis.b8.conv1.conv_clamp is None
    loose = small_generator(conv_clamp=1e6)  # set, but far above every activation: the same numbers
    assert loose.config()["conv_clamp"] == 1e6
    w = latents(g, 3)
    with torch.no_grad():
        assert torch.equal(loose.synthesis(w), g.synthesis(w))


@pytest.mark.parametrize("fused", [False, True])
def test_conv_clamp_clamps_every_layer_and_torgb_output_after_the_activation(fused):
    """NVIDIA's bias_act order: bias, leaky ReLU, gain sqrt 2, then clamp to +-conv_clamp (ToRGB: bias, clamp).
    Each layer of the clamped generator, fed the same input, equals the unclamped layer's output clamped."""
    clamp = 0.5
    g, c = small_generator(seed=4), small_generator(seed=4, conv_clamp=clamp)
    assert c.config()["conv_clamp"] == clamp and c.synthesis.b16.torgb.conv_clamp == clamp
    w = latents(g, 2)
    outs = layer_outputs(c, w, fused)
    assert len(outs) == 3 * 4 - 1  # b4 has no conv0
    triggered = set()
    for name, got in outs.items():
        assert got.abs().max() <= clamp, name
        layer = c.synthesis.get_submodule(name)
        block = c.synthesis.get_submodule(name.split(".")[0])
        if name.endswith("conv0"):
            x = outs[f"b{block.resolution // 2}.conv1"]
        elif name.endswith("conv1"):
            x = block.const[None] if block.resolution == 4 else outs[name.replace("conv1", "conv0")]
        else:
            x = outs[name.replace("torgb", "conv1")]
        with torch.no_grad():
            raw = g.synthesis.get_submodule(name)(x, w, fused)  # same weights, no clamp
            assert torch.equal(layer(x, w, fused), raw.clamp(-clamp, clamp)), name
        if raw.abs().max() > clamp:
            triggered.add(name.rsplit(".", 1)[1])
    assert triggered == {"conv0", "conv1", "torgb"}  # the clamp really acted on every kind of layer
    with torch.no_grad():
        assert not torch.allclose(c.synthesis(w), g.synthesis(w), atol=1e-3)
        # the RGB skip sum is not clamped: with 4 blocks adding up, the raw image exceeds one ToRGB's range
        assert c.synthesis(w).abs().max() > clamp


def test_conv_clamp_round_trips_through_the_registry_and_bad_values_are_refused():
    g = small_generator(conv_clamp=256)
    assert g.config()["conv_clamp"] == 256.0 and type(g.config()["conv_clamp"]) is float
    again = build_generator("stylegan2", g.config())
    assert again.config() == g.config() and again.synthesis.b32.conv0.conv_clamp == 256.0
    for bad in (0, -1.0, float("inf"), float("nan"), "256", True):
        with pytest.raises(ConfigError, match="conv_clamp"):
            StyleGAN2Generator(**SMALL, conv_clamp=bad)


def test_clamped_gradient_traces_with_make_fx_and_matches_eager():
    """The clamp's backward (a where/mask) traces into the plain graph the ONNX export takes."""
    from tr0n_rt.export.gradient import trace

    g = small_generator(conv_clamp=0.5)
    energy_and_grad = square_energy_and_grad(g)
    gm = trace(energy_and_grad, (latents(g, 2),))
    ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    # G's final [-1, 1] clamp + one per synthesis layer and ToRGB (11), each with its masked backward
    assert ops.count("aten.clamp.default") == 12 and ops.count("aten.where.self") >= 12, sorted(set(ops))
    for batch in (1, 3):
        w = latents(g, batch, seed=batch + 10)
        (e_ref, g_ref), (e, grad) = energy_and_grad(w), gm(w)
        assert grad.shape == (batch, 16) and g_ref.abs().sum() > 0
        assert rel_err(e, e_ref) <= 1e-5 and rel_err(grad, g_ref) <= 1e-5


def test_config_f_widths():
    assert [channels_at(2 ** k, 32768, 512) for k in range(2, 11)] == [512] * 5 + [256, 128, 64, 32]
    g = StyleGAN2Generator(resolution=256, mapping_layers=1, noise="none")
    assert g.synthesis.b64.conv1.weight.shape == (512, 512, 3, 3)
    assert g.synthesis.b128.conv0.weight.shape == (256, 512, 3, 3)
    assert g.synthesis.b256.conv1.weight.shape == (128, 128, 3, 3)
    assert g.synthesis.b256.torgb.weight.shape == (3, 128, 1, 1)
    assert not hasattr(g.synthesis, "b512")


def test_rejects_bad_configs_and_latents():
    with pytest.raises(ConfigError):
        StyleGAN2Generator(**{**SMALL, "resolution": 24})
    with pytest.raises(ConfigError):
        StyleGAN2Generator(**{**SMALL, "noise": "random"})
    with pytest.raises(ConfigError):
        StyleGAN2Generator(**{**SMALL, "channel_base": 16})
    g = small_generator()
    with pytest.raises(ShapeError):
        g(torch.randn(2, 12))  # a z, not a w


@pytest.mark.slow
@pytest.mark.parametrize("conv_clamp", [None, 0.5])
def test_traced_gradient_exports_with_a_dynamic_batch(tmp_path, conv_clamp):
    """E(w) = mean of G(w)^2 per sample and dE/dw, traced with autograd and exported once, match torch
    under ONNX Runtime at batch 1 and 4; the graph has no index ops and no per-sample (batch) groups.
    With conv_clamp (small enough to act), the clamp exports as Clip and its masked backward agrees too."""
    import onnx
    import onnxruntime as ort
    from torch.export import Dim

    from tr0n_rt.export.gradient import trace
    from tr0n_rt.export.onnx_fixes import expanded_weight_reads, scatter_gather_nd

    g = small_generator(conv_clamp=conv_clamp)
    energy_and_grad = square_energy_and_grad(g)
    example = latents(g, 2)
    if conv_clamp is not None:
        unclamped = small_generator()
        assert any(o.abs().max() > conv_clamp for o in layer_outputs(unclamped, example).values())
    gm = trace(energy_and_grad, (example,)).eval()
    path = tmp_path / "stylegan2_grad.onnx"
    torch.onnx.export(gm, (example,), str(path), dynamo=True, dynamic_shapes=({0: Dim("batch", min=1, max=4096)},),
                      opset_version=18, input_names=["latent"], output_names=["energy", "grad"],
                      external_data=False, verbose=False)

    model = onnx.load(str(path))
    assert scatter_gather_nd(model) == [] and expanded_weight_reads(model) == []
    widths = {1, 3} | {channels_at(2 ** k, SMALL["channel_base"], SMALL["channel_max"]) for k in range(2, 6)}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    groups = {a.i for n in convs for a in n.attribute if a.name == "group"}
    assert convs and groups <= widths, groups  # 1 (dense), 3 (RGB skip) or a channel count (blur)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == (1 if conv_clamp is None else 1 + 3 * 4 - 1), len(clips)  # G's [-1, 1], + 11 layers

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in ((1, 5), (4, 6)):
        w = latents(g, batch, seed)
        e_ref, g_ref = energy_and_grad(w)
        e, grad = sess.run(None, {"latent": w.numpy()})
        assert e.shape == (batch,) and grad.shape == (batch, 16)
        assert rel_err(e, e_ref) <= 1e-4 and rel_err(grad, g_ref) <= 1e-4, (batch, rel_err(grad, g_ref))
        assert g_ref.abs().sum() > 0
