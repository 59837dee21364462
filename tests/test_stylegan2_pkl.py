"""Importing NVIDIA's official StyleGAN2 pickles (stylegan2-ada-pytorch / stylegan3 network-snapshot-*.pkl).

Pickles are written the way NVIDIA's torch_utils.persistence writes them, by stand-in modules that exist only
while pickling, so loading provably needs none of NVIDIA's code; their module_src would leave a marker file if it
ever ran. Checked: a round trip through the inverse mapping (consistency), an independent restatement of NVIDIA's
forward from its NVIDIA-named tensors (fidelity), strict keys and layout, and hostile pickles refused unrun."""
import builtins
import contextlib
import io
import math
import os
import pickle
import re
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tr0n_rt.export.models.stylegan2_pkl import (
    import_nvidia_pkl,
    infer_config,
    load_nvidia_pkl,
    to_nvidia,
)

from tr0n_rt.errors import CheckpointError

from .test_stylegan2 import SMALL, latents, small_generator, upfirdn2d_reference

MAPPING_LAYERS = 8  # StyleGAN2Generator's default
FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "training", "training.networks")
BUFFERS = ("resample_filter", "noise_const", "w_avg")  # NVIDIA's register_buffer names; the rest are Parameters
FIR = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64  # upfirdn2d.setup_filter

# ---- NVIDIA-style pickling, with NVIDIA's modules faked only while writing ---------------------------------


@contextlib.contextmanager
def nvidia_code():
    """Throwaway torch_utils.persistence, dnnlib.util and training.networks, so pickle can name their globals;
    removed afterwards."""
    assert not any(m in sys.modules for m in FAKE_MODULES)
    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}

    def _reconstruct_persistent_obj(meta):  # NVIDIA's exec()s meta["module_src"]; the loader must never get here
        raise AssertionError("NVIDIA's reconstruct was called")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for name in FAKE_MODULES:
            del sys.modules[name]


class Persistent(nn.Module):
    """Pickles as a @persistence.persistent_class module does: (_reconstruct_persistent_obj, (meta,))."""

    def __reduce__(self):
        reconstruct = sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj
        state = {k: v for k, v in self.__dict__.items() if k != "module_src"}
        return reconstruct, ({"type": "class", "version": 6, "module_src": self.module_src,
                              "class_name": type(self).__name__, "state": state},)


def nv_class(path: str) -> str:
    """NVIDIA's class for a module path of training/networks.py's Generator."""
    last = path.rsplit(".", 1)[-1]
    if path in ("", "mapping", "synthesis"):
        return {"": "Generator", "mapping": "MappingNetwork", "synthesis": "SynthesisNetwork"}[path]
    if last == "affine" or last.startswith("fc"):
        return "FullyConnectedLayer"
    return {"conv0": "SynthesisLayer", "conv1": "SynthesisLayer", "torgb": "ToRGBLayer"}.get(last, "SynthesisBlock")


def nv_attrs(path, cls, sd, conv_clamp=None, lr=0.01):
    """The plain attributes NVIDIA's constructors set (numpy float64 gains, as np.sqrt gives them)."""
    w = sd.get(f"{path}.weight")
    if cls == "FullyConnectedLayer":
        mul = lr if path.startswith("mapping") else 1.0
        return {"in_features": w.shape[1], "out_features": w.shape[0], "bias_gain": mul,
                "activation": "lrelu" if path.startswith("mapping") else "linear",
                "weight_gain": np.float64(mul) / np.sqrt(w.shape[1])}
    if cls == "SynthesisLayer":
        return {"in_channels": w.shape[1], "out_channels": w.shape[0], "up": 2 if path.endswith("conv0") else 1,
                "use_noise": f"{path}.noise_const" in sd, "activation": "lrelu", "conv_clamp": conv_clamp,
                "padding": 1, "act_gain": np.sqrt(2), "resolution": int(path.split(".")[1][1:])}
    if cls == "ToRGBLayer":
        return {"in_channels": w.shape[1], "out_channels": 3, "conv_clamp": conv_clamp,
                "weight_gain": 1 / np.sqrt(w.shape[1])}
    if cls == "SynthesisBlock":
        return {"resolution": int(path[len("synthesis.b"):]), "img_channels": 3, "architecture": "skip",
                "use_fp16": False, "fused_modconv_default": True}
    if cls == "Generator":
        return {"z_dim": sd["mapping.fc0.weight"].shape[1], "c_dim": 0, "w_dim": sd["mapping.fc0.weight"].shape[0],
                "img_resolution": max(int(m.group(1)) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))),
                "img_channels": 3}
    return {"num_layers": MAPPING_LAYERS, "w_avg_beta": 0.995} if cls == "MappingNetwork" else {}


def nv_tree(sd, src, classes=None, attrs=None, **layout):
    """An NVIDIA-layout module tree holding the flat state dict sd; classes/attrs {path: ...} override."""
    paths = {""}
    for p in [k.rpartition(".")[0] for k in sd] + list(classes or {}):
        while p:  # the module and its ancestors
            paths.add(p)
            p = p.rpartition(".")[0]
    modules = {}
    for p in sorted(paths, key=lambda p: (p.count("."), p)):
        cls = (classes or {}).get(p) or nv_class(p)
        m = type(cls, (Persistent,), {})()
        m.module_src = src
        for k, v in {**nv_attrs(p, cls, sd, **layout), **(attrs or {}).get(p, {})}.items():
            setattr(m, k, v)
        modules[p] = m
        if p:
            parent, _, name = p.rpartition(".")
            modules[parent].add_module(name, m)
    for k, t in sd.items():
        p, _, name = k.rpartition(".")
        if name in BUFFERS:
            modules[p].register_buffer(name, t.clone())
        else:
            modules[p].register_parameter(name, nn.Parameter(t.clone(), requires_grad=False))
    return modules[""]


def marker_src(marker) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src ran')\n"


def nvidia_pickle(path, sd, marker, protocol=4, extra=None, **tree):
    """A network-snapshot pkl as training_loop.py writes it: pickle.dump(dict(G, D, G_ema, augment_pipe, ...))."""
    src = marker_src(marker)
    with nvidia_code() as mods:
        easy = mods["dnnlib.util"].EasyDict
        g_ema = nv_tree(sd, src, **tree)
        g_ema._init_args, g_ema._init_kwargs = (), {"z_dim": SMALL["z_dim"], "mapping_kwargs": easy(num_layers=8)}
        d = nv_tree({"b4.conv0.weight": torch.randn(8, 8, 3, 3), "b4.conv0.resample_filter": FIR}, src,
                    classes={"": "Discriminator", "b4": "DiscriminatorBlock", "b4.conv0": "Conv2dLayer"})
        aug = nv_tree({"p": torch.zeros([]), "Hz_geom": torch.randn(12)}, src, classes={"": "AugmentPipe"},
                      attrs={"": {"xflip": 1.0, "rotate90": 1.0, "lo": np.asarray([0.5, 2.0], dtype=np.float32)}})
        data = dict(G=nv_tree({k: v + 1 for k, v in sd.items()}, src), D=d, G_ema=g_ema, augment_pipe=aug,
                    training_set_kwargs={"class_name": "training.dataset.ImageFolderDataset", "path": "ffhq.zip",
                                         "use_labels": False, "max_size": 70000, "xflip": False, "resolution": 32},
                    **(extra or {}))
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    return path


def nvidia_sd(g):
    return to_nvidia(g.state_dict(), g.image_size, MAPPING_LAYERS)


# ---- round trip and record -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_round_trip_gives_the_same_generator_and_never_runs_module_src(tmp_path, protocol):
    g = small_generator(seed=3)
    marker = tmp_path / "module_src_ran"
    path = nvidia_pickle(tmp_path / "network-snapshot-000000.pkl", nvidia_sd(g), marker, protocol=protocol)
    assert b"module_src ran" in path.read_bytes() and not any(m in sys.modules for m in FAKE_MODULES)
    g2 = import_nvidia_pkl(path)
    w, z = latents(g, 3), torch.randn(3, SMALL["z_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = g.synthesis(w), g2.synthesis(w)
        assert (a - b).abs().max() <= 1e-5 and a.std() > 0.05
        assert (g.mapping(z) - g2.mapping(z)).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in g2.parameters()) and not g2.training
    assert not marker.exists() and not any(m in sys.modules for m in FAKE_MODULES)
    exec(marker_src(tmp_path / "control"), {})  # noqa: S102 -- the same source, run on purpose, leaves its marker
    assert (tmp_path / "control").exists()


def test_record_holds_nvidia_names_classes_and_attributes(tmp_path):
    g = small_generator(seed=1)
    sd = nvidia_sd(g)
    path = nvidia_pickle(tmp_path / "x.pkl", sd, tmp_path / "m")
    rec = load_nvidia_pkl(path)
    assert rec["class_name"] == "Generator" and set(rec["state_dict"]) == set(sd)
    assert all(torch.equal(rec["state_dict"][k], v) for k, v in sd.items())
    assert rec["classes"]["synthesis.b16.conv0"] == "SynthesisLayer"
    assert rec["attributes"]["mapping.fc2"]["weight_gain"] == pytest.approx(0.01 / math.sqrt(SMALL["w_dim"]))
    assert type(rec["attributes"]["synthesis.b8.conv1"]["act_gain"]) is float  # numpy scalar -> Python number
    assert torch.equal(load_nvidia_pkl(path, network="G")["state_dict"]["synthesis.b4.const"],
                       sd["synthesis.b4.const"] + 1)
    assert infer_config(rec) == {**SMALL, "mapping_layers": 8, "mapping_lr_mul": pytest.approx(0.01),
                                 "noise": "const"}


def test_noise_free_generator_and_the_noise_none_override(tmp_path):
    g = small_generator(seed=2)
    sd = nvidia_sd(g)
    quiet = {k: v for k, v in sd.items() if not k.endswith(("noise_const", "noise_strength"))}
    g2 = import_nvidia_pkl(nvidia_pickle(tmp_path / "q.pkl", quiet, tmp_path / "m"))
    assert g2.config()["noise"] == "none"
    g3 = import_nvidia_pkl(nvidia_pickle(tmp_path / "n.pkl", sd, tmp_path / "m"), noise="none")
    assert set(g3.state_dict()) == set(g2.state_dict())
    with pytest.raises(CheckpointError, match="32"):
        import_nvidia_pkl(tmp_path / "n.pkl", resolution=64)


# ---- fidelity: NVIDIA's forward restated from training/networks.py, on NVIDIA-named tensors ----------------
# Written from FullyConnectedLayer / normalize_2nd_moment / modulated_conv2d (fused) / conv2d_resample (generic
# path: upfirdn2d up=2 pad (3, 2) gain 4, then true convolution) / SynthesisLayer / ToRGBLayer / SynthesisBlock
# ("skip") / bias_act (lrelu 0.2, gain sqrt 2, clamp), independently of to_nvidia.

NV_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 8}  # SMALL's widths
W_DIM, Z_DIM, LR = SMALL["w_dim"], SMALL["z_dim"], 0.01


def nv_random_state(seed=0, use_noise=True):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    sd = {"mapping.w_avg": rnd(W_DIM)}
    for i in range(MAPPING_LAYERS):
        sd[f"mapping.fc{i}.weight"] = rnd(W_DIM, Z_DIM if i == 0 else W_DIM, scale=1 / LR)  # N(0, 1) / lr init
        sd[f"mapping.fc{i}.bias"] = rnd(W_DIM, scale=10.0)

    def layer(p, cin, cout, r):
        sd.update({f"{p}.weight": rnd(cout, cin, 3, 3), f"{p}.bias": rnd(cout, scale=0.1),
                   f"{p}.affine.weight": rnd(cin, W_DIM), f"{p}.affine.bias": rnd(cin, scale=0.1, shift=1.0),
                   f"{p}.resample_filter": FIR.clone()})
        if use_noise:
            sd.update({f"{p}.noise_strength": rnd((), scale=0.3), f"{p}.noise_const": rnd(r, r)})

    cin = 0
    for r, c in NV_CHANNELS.items():
        b = f"synthesis.b{r}"
        sd[f"{b}.resample_filter"] = FIR.clone()
        if r == 4:
            sd[f"{b}.const"] = rnd(c, 4, 4)
        else:
            layer(f"{b}.conv0", cin, c, r)
        layer(f"{b}.conv1", c, c, r)
        sd.update({f"{b}.torgb.weight": rnd(3, c, 1, 1), f"{b}.torgb.bias": rnd(3, scale=0.1),
                   f"{b}.torgb.affine.weight": rnd(c, W_DIM), f"{b}.torgb.affine.bias": rnd(c, scale=0.1, shift=1.0)})
        cin = c
    return sd


def nv_fc(sd, p, x, lr, act):
    weight = sd[f"{p}.weight"]
    x = x.matmul((weight * (lr / math.sqrt(weight.shape[1]))).t()) + sd[f"{p}.bias"] * lr
    return F.leaky_relu(x, 0.2) * math.sqrt(2) if act == "lrelu" else x


def nv_mapping(sd, z):
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    for i in range(MAPPING_LAYERS):
        x = nv_fc(sd, f"mapping.fc{i}", x, LR, "lrelu")
    return x


def nv_modulated_conv(x, weight, styles, demodulate, f=None):
    """modulated_conv2d, one sample at a time; f given: conv2d_resample(up=2, padding=1, flip_weight=False)."""
    out = []
    for xb, s in zip(x, styles):
        wb = weight * s[None, :, None, None]  # [O, I, k, k]
        if demodulate:
            wb = wb * (wb.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()[:, None, None, None]
        if f is not None:  # pad: 1 + (fw + up - 1) // 2 = 3 before, 1 + (fw - up) // 2 = 2 after
            out.append(F.conv2d(upfirdn2d_reference(xb[None], f * 4, up=2, pad=(3, 2)), wb.flip([2, 3])))
        else:
            out.append(F.conv2d(xb[None], wb, padding=weight.shape[-1] // 2))
    return torch.cat(out)


def nv_bias_act(x, b, act, clamp, gain=1.0, seen=None, name=None):
    """bias_act's reference order: + bias, activation (lrelu 0.2 with its def_gain sqrt 2), * gain, clamp.
    SynthesisLayer passes gain 1 ("skip") and clamp = conv_clamp * gain; ToRGBLayer act linear, clamp conv_clamp.
    seen: {name: largest |activation| before the clamp}, to show that a clamp acted."""
    x = x + b[None, :, None, None]
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    x = x * gain
    if seen is not None:
        seen[name] = float(x.abs().max())
    return x if clamp is None else x.clamp(-clamp * gain, clamp * gain)


def nv_layer(sd, p, x, w, up, clamp=None, seen=None):
    styles = nv_fc(sd, f"{p}.affine", w, 1.0, "linear")
    x = nv_modulated_conv(x, sd[f"{p}.weight"], styles, True, sd[f"{p}.resample_filter"] if up else None)
    if f"{p}.noise_const" in sd:  # noise_mode="const"
        x = x + sd[f"{p}.noise_const"] * sd[f"{p}.noise_strength"]
    return nv_bias_act(x, sd[f"{p}.bias"], "lrelu", clamp, seen=seen, name=p)


def nv_torgb(sd, p, x, w, clamp=None, seen=None):
    styles = nv_fc(sd, f"{p}.affine", w, 1.0, "linear") / math.sqrt(sd[f"{p}.weight"].shape[1])  # 1x1 weight_gain
    x = nv_modulated_conv(x, sd[f"{p}.weight"], styles, False)
    return nv_bias_act(x, sd[f"{p}.bias"], "linear", clamp, seen=seen, name=p)


def nv_synthesis(sd, w, clamp=None, seen=None):
    x, img = sd["synthesis.b4.const"][None].repeat(w.shape[0], 1, 1, 1), None
    for r in NV_CHANNELS:
        b = f"synthesis.b{r}"
        if r > 4:
            x = nv_layer(sd, f"{b}.conv0", x, w, True, clamp, seen)
        x = nv_layer(sd, f"{b}.conv1", x, w, False, clamp, seen)
        y = nv_torgb(sd, f"{b}.torgb", x, w, clamp, seen)
        img = y if img is None else upfirdn2d_reference(img, sd[f"{b}.resample_filter"] * 4, up=2, pad=(2, 1)) + y
    return img  # the skip sum itself is not clamped


@pytest.fixture(scope="module")
def nv_imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nv")
    sd = nv_random_state(seed=4)
    return sd, import_nvidia_pkl(nvidia_pickle(tmp / "g.pkl", sd, tmp / "marker", conv_clamp=256))


def test_mapping_matches_nvidia_mapping_network(nv_imported):
    sd, g = nv_imported
    z = torch.randn(4, Z_DIM, generator=torch.Generator().manual_seed(0))
    want = nv_mapping(sd, z)
    with torch.no_grad():
        assert (g.mapping(z) - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layer", ["b16.conv0", "b8.conv1", "b16.torgb"])
def test_layers_match_nvidia_synthesis_layers(nv_imported, batch, layer):
    sd, g = nv_imported
    r, c = int(layer.split(".")[0][1:]), layer.split(".")[1]
    cin = NV_CHANNELS[r // 2] if c == "conv0" else NV_CHANNELS[r]
    gen = torch.Generator().manual_seed(batch)
    x, w = torch.randn(batch, cin, r // 2 if c == "conv0" else r, r // 2 if c == "conv0" else r, generator=gen), \
        torch.randn(batch, W_DIM, generator=gen)
    p = f"synthesis.{layer}"
    assert g.config()["conv_clamp"] == 256  # the file's; restated with it too
    want = nv_torgb(sd, p, x, w, 256) if c == "torgb" else nv_layer(sd, p, x, w, up=c == "conv0", clamp=256)
    ours = g.get_submodule(p)
    with torch.no_grad():
        got, got_fused = ours(x, w), ours(x, w, fused=True)
    assert want.shape == got.shape == (batch, 3 if c == "torgb" else NV_CHANNELS[r], r, r)
    assert want.std() > 0.05
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert (got_fused - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("batch", [1, 3])
def test_whole_synthesis_matches_nvidia_forward(nv_imported, batch):
    sd, g = nv_imported
    w = torch.randn(batch, W_DIM, generator=torch.Generator().manual_seed(7))
    want = nv_synthesis(sd, w, clamp=256)  # the file's conv_clamp (ours has it too), inactive at these scales
    assert torch.equal(want, nv_synthesis(sd, w))
    with torch.no_grad():
        got = g.synthesis(w)
    assert want.shape == got.shape == (batch, 3, 32, 32) and want.std() > 0.05
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("conv_clamp", [0.5, 1])
def test_a_conv_clamp_that_acts_matches_nvidia_forward(tmp_path, conv_clamp, fused):
    """A pickled conv_clamp small enough to clip activations in every kind of layer is read from the file,
    and ours clips exactly where bias_act does."""
    sd = nv_random_state(seed=4)
    g = import_nvidia_pkl(nvidia_pickle(tmp_path / "g.pkl", sd, tmp_path / "marker", conv_clamp=conv_clamp))
    assert g.config()["conv_clamp"] == conv_clamp and g.synthesis.b16.torgb.conv_clamp == conv_clamp
    w = torch.randn(3, W_DIM, generator=torch.Generator().manual_seed(7))
    seen = {}
    want = nv_synthesis(sd, w, clamp=conv_clamp, seen=seen)
    assert len(seen) == 3 * len(NV_CHANNELS) - 1
    for kind in ("conv0", "conv1", "torgb"):  # the clamp triggered in each kind of layer
        assert max(v for p, v in seen.items() if p.endswith(kind)) > 2 * conv_clamp, (kind, seen)
    unclamped = nv_synthesis(sd, w)
    assert (want - unclamped).abs().max() > 0.1 * float(unclamped.abs().max())  # and it changes the image
    with torch.no_grad():
        got = g.synthesis(w, fused)
        off = import_nvidia_pkl(tmp_path / "g.pkl", conv_clamp=None).synthesis(w, fused)  # the override
    assert want.shape == got.shape == (3, 3, 32, 32) and want.std() > 0.05
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert (off - unclamped).abs().max() <= 1e-5 * max(1.0, float(unclamped.abs().max()))


def test_conv_clamp_is_inferred_only_when_the_file_sets_one(tmp_path):
    sd = nv_random_state()
    rec = load_nvidia_pkl(nvidia_pickle(tmp_path / "c.pkl", sd, tmp_path / "m", conv_clamp=256))
    assert rec["attributes"]["synthesis.b8.conv1"]["conv_clamp"] == 256
    assert infer_config(rec)["conv_clamp"] == 256.0
    assert "conv_clamp" not in infer_config(load_nvidia_pkl(nvidia_pickle(tmp_path / "n.pkl", sd, tmp_path / "m")))


# ---- strict keys and layout --------------------------------------------------------------------------------


def test_a_missing_key_is_named(tmp_path):
    sd = nv_random_state()
    del sd["synthesis.b16.conv1.bias"]
    with pytest.raises(CheckpointError, match=r"missing: .*synthesis\.b16\.conv1\.bias"):
        import_nvidia_pkl(nvidia_pickle(tmp_path / "x.pkl", sd, tmp_path / "m"))


def test_an_unexpected_key_is_named(tmp_path):
    sd = nv_random_state()
    sd["synthesis.b8.conv1.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected: .*synthesis\.b8\.conv1\.extra"):
        import_nvidia_pkl(nvidia_pickle(tmp_path / "x.pkl", sd, tmp_path / "m"))


def test_a_misshapen_tensor_is_named(tmp_path):
    sd = nv_random_state()
    sd["synthesis.b16.conv0.affine.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"wrong shape: .*b16\.conv0\.affine\.bias"):
        import_nvidia_pkl(nvidia_pickle(tmp_path / "x.pkl", sd, tmp_path / "m"))


def test_a_different_fir_filter_is_refused(tmp_path):
    sd = nv_random_state()
    sd["synthesis.b16.conv0.resample_filter"] = torch.ones(4, 4) / 16  # resample_filter=[1, 1, 1, 1]
    with pytest.raises(CheckpointError, match=r"resample filters .*b16\.conv0\.resample_filter"):
        import_nvidia_pkl(nvidia_pickle(tmp_path / "x.pkl", sd, tmp_path / "m"))


@pytest.mark.parametrize("tree, match", [
    ({"attrs": {"synthesis.b8": {"architecture": "resnet"}}}, r"synthesis\.b8\.architecture = 'resnet'"),
    ({"attrs": {"": {"c_dim": 10}}}, r"c_dim = 10"),
    ({"attrs": {"mapping.fc3": {"activation": "relu"}}}, r"mapping\.fc3\.activation"),
    ({"attrs": {"synthesis.b8.conv1.affine": {"bias_gain": 0.5}}}, r"affine\.bias_gain"),
    ({"lr": 0.1}, r"loads"),  # a different mapping lr is read, not refused
    ({"conv_clamp": 256, "attrs": {"synthesis.b16.torgb": {"conv_clamp": 128}}}, r"conv_clamp differs"),
    ({"conv_clamp": -1}, r"conv_clamp = -1"),
    ({"conv_clamp": "256"}, r"conv_clamp = '256'"),
    ({"classes": {"synthesis.input": "SynthesisInput"},  # networks_stylegan3 keeps numpy arrays as attributes
      "attrs": {"synthesis.input": {"size": np.broadcast_to(np.asarray(36), [2]), "f": np.arange(3.0)}}},
     r"StyleGAN3"),
])
def test_layouts_ours_cannot_reproduce_are_refused(tmp_path, tree, match):
    path = nvidia_pickle(tmp_path / "x.pkl", nv_random_state(), tmp_path / "m", **tree)
    if match == "loads":
        assert import_nvidia_pkl(path).config()["mapping_lr_mul"] == pytest.approx(0.1)
        return
    with pytest.raises(CheckpointError, match=match):
        import_nvidia_pkl(path)


# ---- hostile and broken files -----------------------------------------------------------------------------


class Call:
    """Pickles as a call of fn(*args): what a hostile pickle's REDUCE does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def hostile_calls(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    inner, two = io.BytesIO(), io.BytesIO()
    torch.save(Call(os.system, f"touch {marker}"), inner, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():  # TypedStorage is deprecated, yet it is how a pickled tensor holds its data
        warnings.simplefilter("ignore")
        torch.save(torch.zeros(2).storage(), two, _use_new_zipfile_serialization=False)
    storage = Call(torch.storage._load_from_bytes, two.getvalue())  # a genuine 2-float storage record
    return {
        "os.system": (Call(os.system, f"touch {marker}"), r"posix\.system|os\.system"),
        "exec": (Call(builtins.exec, touch), r"builtins\.exec"),
        "eval": (Call(builtins.eval, touch), r"builtins\.eval"),
        "subprocess": (Call(subprocess.call, ["touch", str(marker)]), r"subprocess\.call"),
        "getattr": (Call(getattr, "x", "upper"), r"builtins\.getattr"),
        "pickle.loads": (Call(pickle.loads, pickle.dumps(Call(os.system, f"touch {marker}"))), r"_pickle\.loads"),
        "storage bytes": (Call(torch.storage._load_from_bytes, inner.getvalue()), r"not a genuine NVIDIA pickle"),
        "tensor past storage": (Call(torch._utils._rebuild_tensor_v2, storage, 0, (9,), (1,), False, {}),
                                r"out of bounds"),
        "tensor of a str": (Call(torch._utils._rebuild_tensor_v2, "x", 0, (1,), (1,), False, {}), r"malformed"),
    }


@pytest.mark.parametrize("kind", list(hostile_calls("m")))
def test_hostile_pickles_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload, match = hostile_calls(marker)[kind]
    path = nvidia_pickle(tmp_path / "evil.pkl", nv_random_state(), tmp_path / "m", extra={"x": payload})
    with pytest.raises(CheckpointError, match=match) as e:
        load_nvidia_pkl(path)
    assert "cannot read" in str(e.value) and not marker.exists() and not (tmp_path / "m").exists()


def test_unknown_classes_and_tensorflow_pickles_are_refused(tmp_path):
    with nvidia_code() as mods:
        class Generator:  # a class pickled by reference: unpickling would import training.networks
            pass

        class Network:
            pass

        Generator.__module__, Network.__module__ = "training.networks", "dnnlib.tflib.network"
        Generator.__qualname__, Network.__qualname__ = "Generator", "Network"
        mods["training.networks"].Generator = Generator
        tflib = sys.modules["dnnlib.tflib.network"] = types.ModuleType("dnnlib.tflib.network")
        tflib.Network = Network
        try:
            (tmp_path / "cls.pkl").write_bytes(pickle.dumps({"G_ema": Generator()}))
            (tmp_path / "tf.pkl").write_bytes(pickle.dumps((Network(), Network(), Network())))
        finally:
            del sys.modules["dnnlib.tflib.network"]
    with pytest.raises(CheckpointError, match=r"training\.networks\.Generator.*only tensors"):
        load_nvidia_pkl(tmp_path / "cls.pkl")
    with pytest.raises(CheckpointError, match="TensorFlow"):
        load_nvidia_pkl(tmp_path / "tf.pkl")


def test_a_crafted_module_cycle_is_refused(tmp_path):
    """Opcodes no pickler writes: a persistent record put into its own _modules after it is built."""
    def text(s):
        return b"\x8c" + bytes([len(s)]) + s.encode()  # SHORT_BINUNICODE

    memo = b"\x94"
    ops = (b"\x80\x04}" + memo + text("G_ema") + memo  # memo 0: top dict, 1: "G_ema"
           + text("torch_utils.persistence") + memo + text("_reconstruct_persistent_obj") + memo + b"\x93" + memo
           + b"}" + memo + b"(" + text("type") + text("class") + text("class_name") + text("Generator")
           + text("state") + b"}" + memo + b"(" + text("_modules") + b"}" + memo + b"uu"  # memo 7: _modules
           + b"\x85R" + memo  # memo 8: the record
           + b"h\x07" + text("self") + b"h\x08s0"  # _modules["self"] = record
           + b"s.")
    (tmp_path / "cycle.pkl").write_bytes(ops)
    with pytest.raises(CheckpointError, match="nested deeper"):
        load_nvidia_pkl(tmp_path / "cycle.pkl")


def test_broken_and_foreign_files_are_checkpoint_errors(tmp_path):
    good = nvidia_pickle(tmp_path / "g.pkl", nv_random_state(), tmp_path / "m").read_bytes()
    (tmp_path / "trunc.pkl").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pkl").write_bytes(b"not a pickle at all")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"G": 1}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pkl")
    for name, match in (("trunc", "cannot read"), ("text", "cannot read"), ("other", "with 'G_ema'"),
                        ("zip", "zip archive"), ("missing", "does not exist")):
        with pytest.raises(CheckpointError, match=match):
            import_nvidia_pkl(tmp_path / f"{name}.pkl")
    assert not (tmp_path / "m").exists()
