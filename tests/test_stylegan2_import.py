"""Importing rosinality/stylegan2-pytorch checkpoints: a round trip through the inverse mapping (consistency),
an independent re-statement of rosinality's layer shapes and forward (fidelity to its layout and runtime
scales), strict key checking, and refusal of pickles that need code."""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

from tr0n_rt.errors import CheckpointError
from tr0n_rt.export.models.stylegan2_load import import_stylegan2
from tr0n_rt.export.models.stylegan2_import import (import_rosinality, infer_config,
                                                    load_rosinality_state, to_rosinality)

from .test_stylegan2 import SMALL, latents, small_generator, upfirdn2d_reference

MAPPING_LAYERS = 8  # StyleGAN2Generator's default


def rosinality_file(tmp_path, sd, name="ckpt.pt", **extra):
    """A file laid out as rosinality's train.py saves it: g, d, g_ema, optimizer states, args, ada_aug_p."""
    g = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(g.parameters())
    g(torch.ones(1, 2)).sum().backward()
    opt.step()
    path = tmp_path / name
    torch.save({"g": {k: v + 1 for k, v in sd.items()}, "d": {"convs.0.0.weight": torch.zeros(3)}, "g_ema": sd,
                "g_optim": opt.state_dict(), "d_optim": opt.state_dict(),
                "args": argparse.Namespace(size=32, lr=0.002, arch="stylegan2"), "ada_aug_p": 0.0, **extra}, path)
    return path


def with_fir_buffers(sd, resolution):
    """Adds rosinality's fixed FIR buffers (make_kernel([1, 3, 3, 1]) * 4), which the importer must skip."""
    k = torch.tensor([1.0, 3, 3, 1])
    k = torch.outer(k, k) / 64 * 4  # make_kernel normalises to sum 1, then * factor ** 2
    sd = dict(sd)
    for i in range(int(math.log2(resolution)) - 2):
        sd[f"convs.{2 * i}.conv.blur.kernel"] = k.clone()
        sd[f"to_rgbs.{i}.upsample.kernel"] = k.clone()
    return sd


def rosinality_sd(g):
    return with_fir_buffers(to_rosinality(g.state_dict(), g.image_size, MAPPING_LAYERS), g.image_size)


# ---- round trip (consistency of from_rosinality with its inverse) -----------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_round_trip_gives_the_same_images(tmp_path, batch):
    g = small_generator(seed=3)
    g2 = import_rosinality(rosinality_file(tmp_path, rosinality_sd(g)))
    for seed in (1, 2):  # two random w per batch size
        w = latents(g, batch, seed=seed)
        with torch.no_grad():
            a, b = g.synthesis(w), g2.synthesis(w)  # raw, unclamped images
            assert (a - b).abs().max() <= 1e-5
            assert (g(w) - g2(w)).abs().max() <= 1e-5
        assert a.std() > 0.05
    assert not any(p.requires_grad for p in g2.parameters()) and not g2.training


def test_config_is_inferred_from_the_keys(tmp_path):
    g = small_generator()
    sd = rosinality_sd(g)
    assert infer_config(sd) == {k: SMALL[k] if k in SMALL else g.config()[k]
                                for k in ("resolution", "w_dim", "z_dim", "mapping_layers", "channel_max",
                                          "channel_base")}
    g2 = import_rosinality(rosinality_file(tmp_path, sd))
    assert g2.image_size == 32 and g2.config()["resolution"] == 32
    assert import_rosinality(sd, resolution=32).image_size == 32
    with pytest.raises(CheckpointError, match="64"):
        import_rosinality(sd, resolution=64)


def test_g_then_bare_state_dict_are_accepted(tmp_path):
    g = small_generator(seed=5)
    sd = rosinality_sd(g)
    w = latents(g, 2)
    for obj in ({"g": sd, "d": {}}, sd):
        path = tmp_path / "x.pt"
        torch.save(obj, path)
        with torch.no_grad():
            assert (import_rosinality(path).synthesis(w) - g.synthesis(w)).abs().max() <= 1e-5
    # g_ema wins over g (rosinality_file stores g = g_ema + 1)
    assert torch.equal(load_rosinality_state(rosinality_file(tmp_path, sd))["input.input"], sd["input.input"])


def test_noise_none_drops_the_noise_entries():
    g = small_generator(noise="none")
    g2 = import_rosinality(rosinality_sd(small_generator()), noise="none")
    assert set(g2.state_dict()) == set(g.state_dict())


# ---- strict keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["convs.1.activate.bias", "noises.noise_3", "to_rgbs.0.bias", "style.4.bias"])
def test_a_missing_key_is_named(tmp_path, key):
    sd = rosinality_sd(small_generator())
    del sd[key]
    with pytest.raises(CheckpointError, match=r"missing: .*" + key.replace(".", r"\.")):
        import_rosinality(rosinality_file(tmp_path, sd))


@pytest.mark.parametrize("key", ["convs.1.conv.extra", "to_rgb1.upsample.kernel", "latent_avg"])
def test_an_unexpected_key_is_named(tmp_path, key):
    sd = rosinality_sd(small_generator())
    sd[key] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected: .*" + key.replace(".", r"\.")):
        import_rosinality(rosinality_file(tmp_path, sd))


def test_a_misshapen_tensor_is_named():
    sd = rosinality_sd(small_generator())
    sd["convs.2.conv.modulation.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"wrong shape: .*b16\.conv0\.affine\.bias"):
        import_rosinality(sd)


def test_a_different_fir_filter_is_refused():
    sd = rosinality_sd(small_generator())
    sd["to_rgbs.1.upsample.kernel"] = torch.ones(4, 4) / 4  # blur_kernel=[1, 1, 1, 1]
    with pytest.raises(CheckpointError, match=r"FIR .*to_rgbs\.1\.upsample\.kernel"):
        import_rosinality(sd)


# ---- one entry point: import_stylegan2 picks the loader by suffix ------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch.load of the NVIDIA pickle
def test_import_stylegan2_dispatches_on_the_file_suffix(tmp_path):
    from tr0n_rt.export.checkpoints import save_state

    from .test_stylegan2_pkl import nvidia_pickle, nvidia_sd

    g = small_generator(seed=6)
    w = latents(g, 2)
    nv = nvidia_pickle(tmp_path / "network-snapshot-000000.pkl", nvidia_sd(g), tmp_path / "marker", conv_clamp=1e6)
    ros = rosinality_file(tmp_path, rosinality_sd(g), name="550000.pt")
    pth = tmp_path / "g.pth"
    torch.save({"g_ema": rosinality_sd(g)}, pth)
    st = tmp_path / "g.safetensors"
    save_state(rosinality_sd(g), st)
    for path in (nv, ros, pth, st):
        g2 = import_stylegan2(path)
        with torch.no_grad():
            assert (g2.synthesis(w) - g.synthesis(w)).abs().max() <= 1e-5, path.name
        assert not g2.training and not any(p.requires_grad for p in g2.parameters())
        # .pkl went to NVIDIA's loader (which reads the pickled conv_clamp), the others to rosinality's
        assert g2.config().get("conv_clamp") == (1e6 if path == nv else None), path.name
    assert import_stylegan2(str(ros), noise="none").config()["noise"] == "none"  # config reaches the loader
    assert import_stylegan2(nv, conv_clamp=None).config().get("conv_clamp") is None
    with pytest.raises(CheckpointError, match="64"):
        import_stylegan2(nv, resolution=64)
    # the suffix, not the content, picks the loader: each refuses the other's file in its own words
    (tmp_path / "ros.pkl").write_bytes(ros.read_bytes())
    with pytest.raises(CheckpointError, match="zip archive, not an NVIDIA network pickle"):
        import_stylegan2(tmp_path / "ros.pkl")
    (tmp_path / "nv.pt").write_bytes(nv.read_bytes())
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        import_stylegan2(tmp_path / "nv.pt")
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", ["g.ckpt", "g.onnx", "generator", "g.pkl.gz"])
def test_import_stylegan2_names_the_formats_it_reads_for_an_unknown_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(CheckpointError, match="unknown StyleGAN2 checkpoint suffix") as e:
        import_stylegan2(path)
    assert all(s in str(e.value) for s in (".pkl", ".pt", ".pth", ".safetensors", "NVIDIA", "rosinality"))
    with pytest.raises(CheckpointError, match="file path"):
        import_stylegan2({"g_ema": {}})


# ---- files that are not weights ----------------------------------------------------------------------------


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_needs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"input.input": torch.zeros(1)}, "x": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        import_rosinality(path)
    assert not marker.exists()


def test_a_missing_or_corrupt_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        import_rosinality(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        import_rosinality(bad)
    torch.save({"g_ema": {"a": 1}}, tmp_path / "nontensor.pt")
    with pytest.raises(CheckpointError, match="no rosinality generator"):
        import_rosinality(tmp_path / "nontensor.pt")


# ---- fidelity: rosinality's layout and forward, re-stated from its model.py --------------------------------
# Written from rosinality's Generator / StyledConv / ModulatedConv2d (fused path) / EqualLinear /
# FusedLeakyReLU / ToRGB / Upsample / Blur, independently of to_rosinality: random tensors in its shapes and
# its runtime scales, so a wrong name, shape, transpose or scale in the importer shows up here.

ROS_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 8}  # SMALL's widths, as rosinality's `channels` dict would list them
W_DIM = SMALL["w_dim"]


def ros_random_state(seed=0, size=32, n_mlp=MAPPING_LAYERS):
    """A random rosinality Generator(size, style_dim=W_DIM, n_mlp) state dict: key names and shapes per its
    constructor. Modulation biases near 1 (bias_init=1), noise strengths nonzero."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    sd = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"], sd[f"style.{i}.bias"] = rnd(W_DIM, W_DIM, scale=100.0), rnd(W_DIM)

    def styled(name, cin, cout, up):
        sd[f"{name}.conv.weight"] = rnd(1, cout, cin, 3, 3)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, W_DIM)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, scale=0.1, shift=1.0)
        sd[f"{name}.noise.weight"] = rnd(1, scale=0.3)
        sd[f"{name}.activate.bias"] = rnd(cout, scale=0.1)
        if up:
            sd[f"{name}.conv.blur.kernel"] = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 16

    def to_rgb(name, cin, up):
        sd[f"{name}.conv.weight"] = rnd(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, W_DIM)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, scale=0.1, shift=1.0)
        sd[f"{name}.bias"] = rnd(1, 3, 1, 1, scale=0.1)
        if up:
            sd[f"{name}.upsample.kernel"] = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 16

    sd["input.input"] = rnd(1, ROS_CHANNELS[4], 4, 4)
    styled("conv1", ROS_CHANNELS[4], ROS_CHANNELS[4], False)
    to_rgb("to_rgb1", ROS_CHANNELS[4], False)
    log_size = int(math.log2(size))
    cin = ROS_CHANNELS[4]
    for i in range(3, log_size + 1):
        cout = ROS_CHANNELS[2 ** i]
        styled(f"convs.{2 * (i - 3)}", cin, cout, True)
        styled(f"convs.{2 * (i - 3) + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{i - 3}", cout, True)
        cin = cout
    for j in range((log_size - 2) * 2 + 1):
        res = (j + 5) // 2
        sd[f"noises.noise_{j}"] = rnd(1, 1, 2 ** res, 2 ** res)
    return sd


def ros_equal_linear(x, weight, bias, lr_mul=1.0):
    return F.linear(x, weight * (1 / math.sqrt(weight.shape[1])) * lr_mul, bias * lr_mul)


def ros_modulated_conv(sd, name, x, style, demodulate, upsample):
    """rosinality ModulatedConv2d.forward, fused path (its default)."""
    weight = sd[f"{name}.weight"]  # [1, O, I, k, k]
    _, o, i, k, _ = weight.shape
    b, _, h, w = x.shape
    s = ros_equal_linear(style, sd[f"{name}.modulation.weight"], sd[f"{name}.modulation.bias"]).view(b, 1, i, 1, 1)
    wt = (1 / math.sqrt(i * k * k)) * weight * s
    if demodulate:
        wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).view(b, o, 1, 1, 1)
    x = x.reshape(1, b * i, h, w)
    if upsample:
        wt = wt.transpose(1, 2).reshape(b * i, o, k, k)
        out = F.conv_transpose2d(x, wt, padding=0, stride=2, groups=b)
        out = out.view(b, o, out.shape[2], out.shape[3])
        kernel = sd[f"{name}.blur.kernel"]  # Blur pad: p = (4 - 2) - (3 - 1) = 0 -> (0 + 1, 0 + 1)
        return upfirdn2d_reference(out, kernel, up=1, pad=(1, 1))
    out = F.conv2d(x, wt.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    return out.view(b, o, out.shape[2], out.shape[3])


def ros_styled_conv(sd, name, x, style, noise, upsample):
    """StyledConv: modulated conv, NoiseInjection (x + weight * noise), FusedLeakyReLU (bias, 0.2, sqrt 2)."""
    out = ros_modulated_conv(sd, f"{name}.conv", x, style, True, upsample)
    out = out + sd[f"{name}.noise.weight"] * noise
    return F.leaky_relu(out + sd[f"{name}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def ros_to_rgb(sd, name, x, style, skip=None):
    out = ros_modulated_conv(sd, f"{name}.conv", x, style, False, False) + sd[f"{name}.bias"]
    if skip is not None:  # Upsample: kernel * 4, pad = ((4 - 2 + 1) // 2 + 1, (4 - 2) // 2) = (2, 1)
        out = out + upfirdn2d_reference(skip, sd[f"{name}.upsample.kernel"], up=2, pad=(2, 1))
    return out


def ros_synthesis(sd, w, size=32):
    """rosinality Generator.forward(w, input_is_latent=True, randomize_noise=False) for one w at every layer."""
    out = sd["input.input"].repeat(w.shape[0], 1, 1, 1)
    out = ros_styled_conv(sd, "conv1", out, w, sd["noises.noise_0"], False)
    skip = ros_to_rgb(sd, "to_rgb1", out, w)
    for i in range(int(math.log2(size)) - 2):
        out = ros_styled_conv(sd, f"convs.{2 * i}", out, w, sd[f"noises.noise_{2 * i + 1}"], True)
        out = ros_styled_conv(sd, f"convs.{2 * i + 1}", out, w, sd[f"noises.noise_{2 * i + 2}"], False)
        skip = ros_to_rgb(sd, f"to_rgbs.{i}", out, w, skip)
    return skip


@pytest.mark.parametrize("batch", [1, 3])
def test_upsampling_modulated_conv_matches_rosinality(batch):
    sd = ros_random_state(seed=1)
    g = import_rosinality(sd)
    gen = torch.Generator().manual_seed(batch)
    x, w = torch.randn(batch, 32, 8, 8, generator=gen), torch.randn(batch, W_DIM, generator=gen)
    noise = sd["noises.noise_3"]  # convs.2 (16x16, upsampling) uses noise_3
    want = ros_styled_conv(sd, "convs.2", x, w, noise, upsample=True)
    with torch.no_grad():
        got = g.synthesis.b16.conv0(x, w)
        got_fused = g.synthesis.b16.conv0(x, w, fused=True)
    assert want.shape == got.shape == (batch, 16, 16, 16)
    assert (got - want).abs().max() <= 1e-5 and (got_fused - want).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_to_rgb_with_skip_matches_rosinality(batch):
    sd = ros_random_state(seed=2)
    g = import_rosinality(sd)
    gen = torch.Generator().manual_seed(batch)
    x, w = torch.randn(batch, 16, 16, 16, generator=gen), torch.randn(batch, W_DIM, generator=gen)
    skip = torch.randn(batch, 3, 8, 8, generator=gen)
    want = ros_to_rgb(sd, "to_rgbs.1", x, w, skip)
    block = g.synthesis.b16
    from tr0n_rt.export.models.stylegan2 import upsample2d

    with torch.no_grad():
        got = block.torgb(x, w) + upsample2d(skip, block.up_kernel)
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_whole_synthesis_matches_rosinality_forward(batch):
    sd = ros_random_state(seed=4)
    g = import_rosinality(sd)
    w = torch.randn(batch, W_DIM, generator=torch.Generator().manual_seed(7))
    want = ros_synthesis(sd, w)
    with torch.no_grad():
        got = g.synthesis(w)
    assert want.shape == got.shape == (batch, 3, 32, 32)
    assert want.std() > 0.05
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))


def test_mapping_matches_rosinality_style_mlp():
    """rosinality style = PixelNorm + n_mlp x EqualLinear(lr_mul=0.01, fused_lrelu)."""
    sd = ros_random_state(seed=5)
    g = import_rosinality(sd)
    z = torch.randn(4, W_DIM, generator=torch.Generator().manual_seed(0))
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for i in range(1, MAPPING_LAYERS + 1):
        x = ros_equal_linear(x, sd[f"style.{i}.weight"], torch.zeros(W_DIM), lr_mul=0.01)
        x = F.leaky_relu(x + sd[f"style.{i}.bias"] * 0.01, 0.2) * math.sqrt(2)
    with torch.no_grad():
        assert (g.mapping(z) - x).abs().max() <= 1e-4 * max(1.0, float(x.abs().max()))
