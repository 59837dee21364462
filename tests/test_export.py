"""Export: every graph against torch at two inputs, graph hygiene, FP16 variants, the manifest."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tr0n_rt.bundle import load_bundle
from tr0n_rt.export.bundle_export import export_bundle
from tr0n_rt.export.fp16 import remove_round_trips, to_fp16
from tr0n_rt.export.graphs import graph_specs
from tr0n_rt.export.onnx_fixes import (conv_grads_as_conv, expanded_weight_reads, fold_expanded_weights,
                                      pool_grads_as_resize)
from tr0n_rt.export.pipeline import TorchPipeline
from tr0n_rt.errors import ConfigError
from tr0n_rt.export.validate import ValidationError, run_onnx, validate_fp32


def test_every_graph_is_exported_validated_and_listed(text_bundle):
    m = json.loads((text_bundle / "manifest.json").read_text())
    assert set(m["graphs"]) == {"text_encoder", "image_encoder", "translator", "generator", "energy", "step",
                                "energy_grad", "update"}
    for name, report in m["export"]["graphs"].items():
        assert report["fp32"]["max_rel_err"] <= 1e-4, (name, report)
        assert set(m["graphs"][name]["files"]) == {"fp32", "fp16"}
    step = m["graphs"]["step"]
    assert step["inputs"]["aug_noise"]["shape"] == ["batch", "copies", 8]
    assert step["inputs"]["means"]["shape"][0] == "batch"
    assert m["export"]["graphs"]["step"]["fp16"]["energy"] <= 1e-2
    b = load_bundle(text_bundle)  # checksums and schema hold
    assert b.info.latent_dim == 8 and b.info.num_components == 3


def test_no_graph_reads_an_expanded_weight_or_uses_vendor_ops(text_bundle):
    for f in text_bundle.glob("*.onnx"):
        model = onnx.load(str(f))
        assert expanded_weight_reads(model) == [], f
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), f
        if "text_encoder" not in f.name:
            assert not any(n.op_type in ("ScatterND", "GatherND") for n in model.graph.node), f


@pytest.mark.slow
def test_a_gradient_frozen_into_a_constant_is_caught(tiny_text_pipeline, tmp_path, monkeypatch):
    """Export the step with its energy gradient replaced by the gradient at the example input:
    validation at other inputs must fail."""
    import tr0n_rt.export.step as step_mod

    p = TorchPipeline.load(tiny_text_pipeline)
    spec = next(s for s in graph_specs(p) if s.name == "step")
    real = step_mod.energy_and_grads
    frozen = {}

    def constant_gradient(energy, means, logits, condition, aug_noise, aesthetic_weight=None):
        e, gm, gl = real(energy, means, logits, condition, aug_noise, aesthetic_weight)
        if "g" not in frozen:  # the first (example) call's gradient becomes a constant
            frozen["g"] = (torch.randn(gm.shape[1:]), torch.randn(gl.shape[1:]))
        return e, frozen["g"][0].expand_as(means), frozen["g"][1].expand_as(logits)

    from tr0n_rt.export.graphs import export_graph

    monkeypatch.setattr(step_mod, "energy_and_grads", constant_gradient)
    path = export_graph(p, spec, tmp_path / "step.onnx")
    monkeypatch.setattr(step_mod, "energy_and_grads", real)
    with pytest.raises(ValidationError, match="differs from torch"):
        validate_fp32(p, spec, path)


def test_a_kink_crossed_by_onnx_runtime_alone_passes_at_a_nearby_input_a_wrong_output_does_not(
        tiny_text_pipeline, text_bundle, monkeypatch):
    """ONNX Runtime's result planted off by 1e-3 in one element of one output (rounding on the other side
    of a ReLU): torch float32 agrees with float64 there, so only the nudged input can clear it, and it
    does, as "kink"; planted at the nudged input too, the graph fails."""
    import tr0n_rt.export.validate as validate

    p = TorchPipeline.load(tiny_text_pipeline)
    spec = next(s for s in graph_specs(p) if s.name == "energy")
    path = text_bundle / "energy.onnx"
    feeds = validate._feeds(p, spec, zero_state=False)
    ref = validate.run_torch(p, spec, feeds)
    o = spec.outputs[0]

    def planted(results):
        out = [dict(r) for r in results]
        out[1][o] = out[1][o].copy()
        out[1][o].reshape(-1)[0] += 1e-3 * np.linalg.norm(out[1][o]) + 1e-3
        return out

    report = validate._against_float64(p, spec, feeds, ref, planted(run_onnx(path, [
        {k: v.numpy() for k, v in x.items()} for x in feeds])), path)
    assert report[o]["onnx_vs_fp64"] > 1e-4 and report[o]["kink"]["onnx_vs_fp64"] <= 1e-4, report
    real = validate.run_onnx
    monkeypatch.setattr(validate, "run_onnx", lambda path, feeds: planted(real(path, feeds)))
    with pytest.raises(ValidationError, match="differs from torch.*at a nearby input"):
        validate._against_float64(p, spec, feeds, ref, planted(real(path, [
            {k: v.numpy() for k, v in x.items()} for x in feeds])), path)


def expand_matmul_model():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.random.rand(12).astype(np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [5, 4, 3])
    nodes = [helper.make_node("Expand", ["w", "shape"], ["w_big"], name="expand"),
             helper.make_node("MatMul", ["x", "w_big"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2, 3])], [w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_expanded_weight_is_detected_and_folded_without_changing_results(tmp_path):
    model = expand_matmul_model()
    assert expanded_weight_reads(model) == ["matmul"]
    x = np.random.rand(5, 2, 4).astype(np.float32)
    onnx.save(model, str(tmp_path / "a.onnx"))
    before = run_onnx(tmp_path / "a.onnx", [{"x": x}])[0]["y"]
    assert fold_expanded_weights(model) == 1
    assert expanded_weight_reads(model) == [] and not any(n.op_type == "Expand" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "b.onnx"))
    np.testing.assert_allclose(run_onnx(tmp_path / "b.onnx", [{"x": x}])[0]["y"], before, rtol=1e-6)


def test_transposed_expanded_weight_in_a_backward_is_folded(tmp_path):
    """The gradient of x @ expand(W) reads transpose(expand(W)): fold it to transpose(W)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.random.rand(12).astype(np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [5, 4, 3])
    nodes = [helper.make_node("Expand", ["w", "shape"], ["w_big"], name="expand"),
             helper.make_node("Transpose", ["w_big"], ["w_big_t"], perm=[0, 2, 1], name="permute"),
             helper.make_node("MatMul", ["g", "w_big_t"], ["y"], name="matmul_backward")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("g", TensorProto.FLOAT, [5, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2, 4])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert expanded_weight_reads(model) == ["matmul_backward"]
    x = np.random.rand(5, 2, 3).astype(np.float32)
    onnx.save(model, str(tmp_path / "a.onnx"))
    before = run_onnx(tmp_path / "a.onnx", [{"g": x}])[0]["y"]
    assert fold_expanded_weights(model) == 1 and expanded_weight_reads(model) == []
    assert not any(n.op_type == "Expand" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "b.onnx"))
    np.testing.assert_allclose(run_onnx(tmp_path / "b.onnx", [{"g": x}])[0]["y"], before, rtol=1e-6)


def pool_grad_model() -> onnx.ModelProto:
    """Three depthwise transposed convs as export/gradient.py writes pooling gradients: 2x2 and 3x3 windows
    with a uniform kernel (rewritable), and a non-uniform 2x2 kernel (a real conv: must stay)."""
    c = 3
    weights = {"w2": np.full((c, 1, 2, 2), 0.25, np.float32), "w3": np.full((c, 1, 3, 3), 1 / 9, np.float32),
               "w_learned": np.random.default_rng(0).random((c, 1, 2, 2)).astype(np.float32)}
    nodes = [helper.make_node("ConvTranspose", ["g", "w2"], ["a"], group=c, strides=[2, 2], name="pool2_grad"),
             helper.make_node("ConvTranspose", ["a", "w3"], ["b"], group=c, strides=[3, 3], name="pool3_grad"),
             helper.make_node("ConvTranspose", ["b", "w_learned"], ["y"], group=c, strides=[2, 2], name="learned")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["n", c, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c, 24, 36])],
                              [onnx.numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_pool_gradients_become_resize_with_the_same_results(tmp_path):
    model = pool_grad_model()
    onnx.save(model, str(tmp_path / "a.onnx"))
    feeds = [{"g": np.random.default_rng(n).standard_normal((n, 3, 2, 3)).astype(np.float32)} for n in (1, 4)]
    before = run_onnx(tmp_path / "a.onnx", feeds)
    assert pool_grads_as_resize(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Mul", "Resize", "Mul", "Resize", "ConvTranspose"], ops
    assert {i.name for i in model.graph.initializer} >= {"w_learned"} and "w2" not in {i.name for i in
                                                                                        model.graph.initializer}
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "b.onnx"))
    for want, got in zip(before, run_onnx(tmp_path / "b.onnx", feeds)):
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6, atol=1e-7)


def test_stride_1_conv_gradients_become_convs_with_the_same_results(tmp_path):
    """ConvTranspose as export/gradient.py writes conv input gradients: stride 1 with pads, dilation and a
    bias, grouped (C_out / g != C_in / g), and depthwise with a weight that is a Mul of two constants (as
    StyleGAN2's blur and gain give) are rewritten; a stride-2 one and one reading a graph input are kept."""
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(shape).astype(np.float32) for n, shape in
         (("w_pad", (4, 6, 3, 3)), ("w_dil", (6, 5, 3, 3)), ("bias", (5,)), ("w_1x1", (5, 4, 1, 1)),
          ("w_s2", (4, 4, 3, 3)), ("w_grp", (4, 3, 3, 3)), ("w_dw", (6, 1, 4, 4)), ("gain", (1,)))}
    nodes = [helper.make_node("ConvTranspose", ["x", "w_pad"], ["a"], pads=[1, 0, 2, 1], name="pad"),
             helper.make_node("ConvTranspose", ["a", "w_dil", "bias"], ["b"], dilations=[2, 2], pads=[2, 2, 2, 2],
                              name="dilated"),
             helper.make_node("ConvTranspose", ["b", "w_1x1"], ["c"], name="pointwise"),
             helper.make_node("ConvTranspose", ["c", "w_s2"], ["d"], strides=[2, 2], pads=[1, 1, 1, 1], name="strided"),
             helper.make_node("ConvTranspose", ["d", "w_grp"], ["e"], group=2, pads=[1, 1, 1, 1], name="grouped"),
             helper.make_node("Mul", ["w_dw", "gain"], ["w_dw_scaled"], name="gain"),
             helper.make_node("ConvTranspose", ["e", "w_dw_scaled"], ["f"], group=6, pads=[1, 2, 2, 1],
                              name="depthwise"),
             helper.make_node("ConvTranspose", ["f", "w_in"], ["y"], pads=[1, 1, 1, 1], name="weight_input")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 7, 9]),
              helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [6, 2, 3, 3])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                 ["n", 2, 12, 20])],
                              [onnx.numpy_helper.from_array(v, n) for n, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "a.onnx"))
    feeds = [{"x": rng.standard_normal((n, 4, 7, 9)).astype(np.float32),
              "w_in": rng.standard_normal((6, 2, 3, 3)).astype(np.float32)} for n in (1, 3)]
    before = run_onnx(tmp_path / "a.onnx", feeds)
    assert conv_grads_as_conv(model) == 5
    assert [n.op_type for n in model.graph.node] == ["Conv", "Conv", "Conv", "ConvTranspose", "Conv", "Conv",
                                                     "ConvTranspose"]  # the dead Mul is gone
    assert [a.i for n in model.graph.node for a in n.attribute if a.name == "group"] == [1, 1, 1, 2, 6], \
        "the kept ConvTransposes have no group attribute here"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "b.onnx"))
    for want, got in zip(before, run_onnx(tmp_path / "b.onnx", feeds)):
        assert got["y"].shape == want["y"].shape  # values reach 3e4 after six convs: compare by relative error
        assert np.linalg.norm(got["y"] - want["y"]) / np.linalg.norm(want["y"]) < 1e-6


def test_conv_weight_of_transpose_matches_torch_grouped_conv_gradient():
    """For groups 1, 2 and depthwise: conv_transpose2d(g, W) == conv2d(g, conv_weight_of_transpose(W))
    with padding k - 1 - p, which is what the rewrite relies on."""
    from tr0n_rt.export.onnx_fixes import conv_weight_of_transpose

    torch.manual_seed(0)
    for c_in, c_out, groups, k, p in ((4, 6, 1, 3, 1), (4, 6, 2, 3, 1), (6, 6, 6, 4, 1), (6, 3, 3, 2, 0)):
        w = torch.randn(c_in, c_out // groups, k, k)
        g = torch.randn(2, c_in, 8, 7)
        want = torch.nn.functional.conv_transpose2d(g, w, padding=p, groups=groups)
        as_conv = torch.from_numpy(conv_weight_of_transpose(w.numpy(), groups))
        got = torch.nn.functional.conv2d(g, as_conv, padding=k - 1 - p, groups=groups)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fp16_keeps_float32_islands_exact():
    """A float32 island (here Softmax -> Exp, both kept in float32) must not be rounded to FP16
    between its nodes; tiny values that FP16 flushes to zero survive."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("Exp", ["sq"], ["e"], name="exp"),
             helper.make_node("Log", ["e"], ["y"], name="log")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    m16 = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ops = [n.op_type for n in m16.graph.node]
    assert "Exp" in ops and "Log" in ops
    # between exp and log no FP16 round trip remains
    producer = {o: n for n in m16.graph.node for o in n.output}
    log = next(n for n in m16.graph.node if n.op_type == "Log")
    chain = producer[log.input[0]]
    while chain.op_type == "Cast":
        assert next(a.i for a in chain.attribute if a.name == "to") == TensorProto.FLOAT
        chain = producer[chain.input[0]]
    assert chain.op_type == "Exp"
    assert remove_round_trips(m16) == 0  # idempotent


def test_fp16_keeps_light_nodes_between_float32_nodes_in_float32(tmp_path):
    """clip_per_sample's pattern on an FP16 activation h = x W: the norm (Pow, ReduceSum, Pow: float32)
    goes through Reshape and + eps to a float32 Div. In FP16 a norm over 65504 became inf there and the
    clipped gradient 0, silently."""
    c = lambda name, v: onnx.numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Pow", ["h", "two"], ["sq"]), helper.make_node("ReduceSum", ["sq", "axes"], ["ss"]),
             helper.make_node("Pow", ["ss", "half"], ["norm"]), helper.make_node("Reshape", ["norm", "shape"], ["n2"]),
             helper.make_node("Add", ["n2", "eps"], ["den"]), helper.make_node("Div", ["one", "den"], ["coef"]),
             helper.make_node("Mul", ["h", "coef"], ["y"])]
    inits = [c("w", np.full((4, 1100), 500.0)), c("two", 2.0), c("half", 0.5), c("eps", 1e-6), c("one", 1.0),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"),
             onnx.numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1100])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for i, n in enumerate(model.graph.node):
        n.name = f"n{i}"
    onnx.save(to_fp16(model), str(tmp_path / "y16.onnx"))
    x = np.ones((2, 4), np.float32)  # h = 2000 everywhere: it fits FP16, its norm (66332) does not
    (got,) = run_onnx(tmp_path / "y16.onnx", [{"x": x}])
    h = x @ np.full((4, 1100), 500.0, np.float32)
    np.testing.assert_allclose(got["y"], h / np.linalg.norm(h, axis=1, keepdims=True), rtol=2e-3)


def test_fp16_keeps_the_resampling_of_input_images_in_float32(text_bundle):
    """The augmentation's resampling (M_h @ x @ M_w^T, its matrices computed from aug_noise alone) stays
    float32 where x is energy_grad's input image: FP16 rounding of the bilinear weights was a coherent
    error in an otherwise exact image (export/fp16.py: light_input_functions). In the step x is G's FP16
    output, and the resampling follows it."""
    from tr0n_rt.export.fp16 import reachable_nodes
    from tr0n_rt.export.onnx_fixes import infer_shapes

    for name, forward_type in (("energy_grad", TensorProto.FLOAT), ("step", TensorProto.FLOAT16)):
        m = onnx.load(str(text_bundle / f"{name}.fp16.onnx"))
        infer_shapes(m)
        types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)}
        inputs = {i.name for i in m.graph.input}
        noise = set(reachable_nodes(m, {"aug_noise"})) - set(reachable_nodes(m, inputs - {"aug_noise"}))
        producer = {o: n for n in m.graph.node for o in n.output}

        def source(v):  # through the converter's casts
            while v in producer and producer[v].op_type == "Cast":
                v = producer[v].input[0]
            return producer.get(v)

        resampling = [n for n in m.graph.node if n.op_type == "MatMul" and n.name not in noise
                      and any(source(i) is not None and source(i).name in noise for i in n.input)]
        nodes = list(m.graph.node)
        first_conv = next(i for i, n in enumerate(nodes) if n.op_type == "Conv")  # energy_grad: the encoder's
        forward = [n for n in resampling if nodes.index(n) < first_conv or name == "step"]
        assert len(resampling) >= 4 and len(forward) >= 2, (name, [n.name for n in resampling])
        for n in resampling:  # energy_grad's backward resampling (after the encoder) is FP16 as the rest
            want = forward_type if n in forward else TensorProto.FLOAT16
            assert types[n.output[0]] == want, (name, n.name, types[n.output[0]])


def test_fp16_graphs_keep_float32_io(text_bundle):
    for f in text_bundle.glob("*.fp16.onnx"):
        model = onnx.load(str(f))
        onnx.checker.check_model(model)  # nodes topologically sorted again after the converter's casts
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64), (f, v.name)
        assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer), f


def test_strict_fp16_validation_agrees_with_the_report(text_bundle, tiny_text_pipeline):
    """The report's within_tolerance and strict mode say the same thing for the step graph."""
    from tr0n_rt.export.validate import validate_fp16

    p = TorchPipeline.load(tiny_text_pipeline)
    spec = next(s for s in graph_specs(p) if s.name == "step")
    report = validate_fp16(p, spec, text_bundle / "step.fp16.onnx", text_bundle / "step.onnx", strict=False)
    assert report["energy"] <= 1e-2 and 0.99 < report["velocity_next cosine"] <= 1.0
    if report["within_tolerance"]:
        validate_fp16(p, spec, text_bundle / "step.fp16.onnx", text_bundle / "step.onnx", strict=True)
    else:
        with pytest.raises(ValidationError, match="outside the FP16 tolerance"):
            validate_fp16(p, spec, text_bundle / "step.fp16.onnx", text_bundle / "step.onnx", strict=True)


@pytest.mark.slow
def test_fp16_validation_catches_a_reversed_update(tiny_text_pipeline, tmp_path, monkeypatch):
    """A step whose update goes the wrong way changes means_next by ~1% only (the latents are far larger
    than one update): the update cosines must refuse it."""
    import tr0n_rt.export.step as step_mod
    from tr0n_rt.export.graphs import export_graph
    from tr0n_rt.export.validate import validate_fp16

    p = TorchPipeline.load(tiny_text_pipeline)
    spec = next(s for s in graph_specs(p) if s.name == "step")
    good = export_graph(p, spec, tmp_path / "good" / "step.onnx")
    real = step_mod.energy_and_grads

    def reversed_gradient(*args, **kwargs):
        e, gm, gl = real(*args, **kwargs)
        return e, -gm, -gl
    monkeypatch.setattr(step_mod, "energy_and_grads", reversed_gradient)
    bad = export_graph(p, spec, tmp_path / "bad" / "step.onnx")
    report = validate_fp16(p, spec, good, good, strict=True)  # a graph agrees with itself
    assert report["means update cosine"] > 0.9999 and report["logits update cosine"] > 0.9999
    assert report["logits update descent"] > 0.9999
    with pytest.raises(ValidationError, match="update cosine|gradient cosine|update descent"):
        validate_fp16(p, spec, bad, good, strict=True)
    report = validate_fp16(p, spec, bad, good, strict=False)
    assert report["means update cosine"] < -0.9 and report["logits update cosine"] < -0.9, report
    assert report["logits update descent"] < -0.9, report


def test_logits_update_descent_weighs_flips_by_the_gradient():
    """The logits' gate (FP16_ADAM_STEP_DESCENT): Adam's first step is about -lr sign(g), so flipping the
    K components of one latent dimension whose gradient is near zero costs the cosine 2 K / n (under its
    old 0.98 bound) but the descent only what those components matter to E; a reversed update, or
    flips where the gradient is large, still fail."""
    from tr0n_rt.export.validate import FP16_ADAM_STEP_DESCENT, cosine, descent

    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 10, 20))  # batch 3, K = 10, D = 20, as the shapes step's second case
    g[1, :, 3] *= 0.01  # one latent dimension of one sample with a near-zero gradient
    u32 = -1e-2 * g / (np.abs(g) + 1e-8)  # Adam's first step from zero state
    u16 = u32.copy()
    u16[1, :, 3] *= -1  # FP16 flips that dimension's sign
    assert cosine(u16, u32) < 0.97 and descent(u16, u32, g) > 0.999
    assert descent(-u32, u32, g) == pytest.approx(-1.0)
    big = u32.copy()
    worst = np.argsort(-np.abs(g).reshape(-1))[:6]  # 1% of the components, the largest gradients
    big.reshape(-1)[worst] *= -1
    assert cosine(big, u32) > 0.97 and descent(big, u32, g) < FP16_ADAM_STEP_DESCENT
    assert descent(np.zeros_like(u32), np.zeros_like(u32), np.zeros_like(g)) == 1.0


@pytest.mark.slow
def test_dynamic_axes_survive_sizes_that_equal_static_ones(tmp_path):
    """K = 4 components with 4 classes (the condition's width is 4): tracing once unified K with that
    static size and exported means [batch, 4, D]. K must stay dynamic, and a graph whose declared
    dynamic axis came out fixed is refused."""
    from tests.conftest import build_tiny_pipeline
    from tr0n_rt.export.bundle_export import check_dynamic_axes, tensor_specs
    from tr0n_rt.export.graphs import export_graph

    p = TorchPipeline.load(build_tiny_pipeline(tmp_path / "pipe", "class", components=4))
    assert p.translator.config.cond_dim == p.translator.config.num_components == 4
    spec = next(s for s in graph_specs(p) if s.name == "step")
    path = export_graph(p, spec, tmp_path / "step.onnx")
    inputs = tensor_specs(onnx.load(str(path), load_external_data=False).graph.input)
    assert inputs["means"]["shape"][:2] == ["batch", "components"], inputs["means"]
    check_dynamic_axes(spec, inputs)
    inputs["means"]["shape"][1] = 4
    with pytest.raises(ValidationError, match=r"fixed axes declared dynamic: means\[1\] = 4"):
        check_dynamic_axes(spec, inputs)


@pytest.mark.slow
def test_polygraphy_runs_every_graph_with_onnxruntime(text_bundle):
    """`polygraphy run <graph>.onnx --onnxrt` on each graph (polygraphy draws its own inputs)."""
    import subprocess
    import sys
    from pathlib import Path

    polygraphy = Path(sys.executable).parent / "polygraphy"
    for f in sorted(text_bundle.glob("*.onnx")):
        cmd = [str(polygraphy), "run", str(f), "--onnxrt", "--val-range", "tokens:[1,9]", "[0.0,1.0]"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (f.name, done.stdout[-2000:], done.stderr[-2000:])
        assert "PASSED" in done.stdout + done.stderr, f.name


@pytest.mark.slow
def test_a_failed_re_export_leaves_the_bundle_as_it_was(text_bundle, tmp_path, monkeypatch):
    """Graphs are staged and validated before anything in the bundle is replaced: a re-export that fails
    on its last graph keeps every earlier file byte for byte, and the bundle still loads."""
    from tr0n_rt.export import bundle_export

    folder = tmp_path / "bundle"
    shutil.copytree(text_bundle, folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    real = bundle_export.validate_fp32

    def fail_on_step(p, spec, path):
        if spec.name == "step":
            raise ValidationError("step: differs from torch (planted)")
        return real(p, spec, path)
    monkeypatch.setattr(bundle_export, "validate_fp32", fail_on_step)
    with pytest.raises(ValidationError, match="planted"):
        export_bundle(folder, graphs=["generator", "step"], fp16=False)
    after = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    assert after == before and [f.name for f in folder.iterdir() if f.is_dir()] == []  # no staging left
    load_bundle(folder)
    (folder / ".export-killed").mkdir()  # what a SIGKILLed export leaves: cleared by the next one
    (folder / ".export-killed" / "step.onnx").write_bytes(b"partial")
    with pytest.raises(ConfigError, match="has no graph"):
        export_bundle(folder, graphs=["stepp"], fp16=False)  # a typo is refused, not a silent no-op
    monkeypatch.setattr(bundle_export, "validate_fp32", real)
    export_bundle(folder, graphs=["translator"], fp16=False)
    assert [f.name for f in folder.iterdir() if f.is_dir()] == []
    assert load_bundle(folder).manifest["graphs"].keys() == json.loads(before["manifest.json"])["graphs"].keys()


def test_a_manifest_write_that_fails_restores_the_replaced_files(text_bundle, tmp_path, monkeypatch):
    """The new files are in place before the manifest is written: if that write fails (a full disk),
    the files it would have listed go and the replaced ones come back, so the old manifest still holds."""
    import errno

    from tr0n_rt.export import bundle_export

    folder = tmp_path / "bundle"
    shutil.copytree(text_bundle, folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(bundle_export, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_bundle(folder, graphs=["translator"], fp16=False, validate=False)
    after = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    assert after == before and [f.name for f in folder.iterdir() if f.is_dir()] == []
    load_bundle(folder)  # every checksum holds


def test_an_export_interrupted_while_moving_files_in_restores_the_bundle(text_bundle, tmp_path, monkeypatch):
    from pathlib import Path

    from tr0n_rt.export import bundle_export

    folder = tmp_path / "bundle"
    shutil.copytree(text_bundle, folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    real, backed_up = bundle_export.os.replace, []

    def interrupted(src, dst):  # os.replace for everyone: act only on the move of the new translator.onnx
        if Path(dst).parent.name == ".replaced":
            backed_up.append(Path(dst).name)
        if Path(dst) == folder / "translator.onnx" and Path(src).parent.name.startswith(".export-"):
            raise KeyboardInterrupt  # generator.onnx is moved in, the old translator.onnx is in the backup
        return real(src, dst)
    monkeypatch.setattr(bundle_export.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(folder, graphs=["translator", "generator"], fp16=False, validate=False)
    monkeypatch.setattr(bundle_export.os, "replace", real)
    assert backed_up == ["BUNDLE-FORMAT.md", "generator.onnx", "translator.onnx"]  # the spec is rewritten each time
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()} == before
    load_bundle(folder)


def test_constant_expressions_are_folded_only_when_pure_and_fixed():
    """A weight computed by a random op, or from an initializer that is also a graph input (a default the
    caller may override), is not a constant: those ConvTransposes stay."""
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Dropout", ["w", "ratio", "training"], ["w_drop"], name="dropout"),
             helper.make_node("ConvTranspose", ["x", "w_drop"], ["a"], pads=[1, 1, 1, 1], name="random_weight"),
             helper.make_node("Neg", ["w_default"], ["w_neg"], name="neg"),
             helper.make_node("ConvTranspose", ["a", "w_neg"], ["y"], pads=[1, 1, 1, 1], name="input_weight")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
                                           helper.make_tensor_value_info("w_default", TensorProto.FLOAT, [2, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [w, onnx.numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w_default"),
                               onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                               onnx.numpy_helper.from_array(np.array(True), "training")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert conv_grads_as_conv(model) == 0
    assert [n.op_type for n in model.graph.node].count("ConvTranspose") == 2


def test_topological_sort_ignores_omitted_optional_values():
    from tr0n_rt.export.fp16 import topological_sort

    nodes = [helper.make_node("LayerNormalization", ["r", "s", "b"], ["ln", "", "istd"], name="ln"),
             helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize")]  # out of order on purpose
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("ln", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                               onnx.numpy_helper.from_array(np.ones(4, np.float32), "s"),
                               onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    topological_sort(model)
    assert [n.name for n in model.graph.node] == ["resize", "ln"]


@pytest.mark.slow
def test_a_partial_re_export_refuses_to_keep_graphs_of_changed_weights(text_bundle, tmp_path):
    """Retrained generator weights, then `--graphs generator` alone: energy, step and update (which contain
    the generator) would keep the old weights, so the export names them; with them it succeeds."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "bundle"
    shutil.copytree(text_bundle, folder)
    assert json.loads((folder / "manifest.json").read_text())["export"]["parts"]["generator"]
    weights = load_file(str(folder / "generator.safetensors"))
    save_file({k: np.asarray(v * 1.01, dtype=v.dtype) for k, v in weights.items()}, str(folder / "generator.safetensors"))
    with pytest.raises(ConfigError, match=r"energy was exported from other generator.*update was exported from "
                                          r"other generator.*--graphs energy generator step update"):
        export_bundle(folder, graphs=["generator"], fp16=False, validate=False)
    export_bundle(folder, graphs=["generator", "energy", "step", "update"], fp16=False, validate=False)
    export_bundle(folder, graphs=["translator"], fp16=False, validate=False)  # nothing else changed since
    load_bundle(folder)


def test_the_step_backward_uses_forward_convs(text_bundle):
    """The tiny pipeline's step: stride-1 conv gradients are Convs (tests/test_gradient.py checks that the
    ReLU gradient is a product, not a Where)."""
    m = json.loads((text_bundle / "manifest.json").read_text())["export"]["graphs"]["step"]
    model = onnx.load(str(text_bundle / "step.onnx"))
    assert m["conv_grads_as_conv"] >= 1, m
    transposed = [n for n in model.graph.node if n.op_type == "ConvTranspose"
                  and any(a.name == "strides" and list(a.ints) == [1, 1] for a in n.attribute)]
    assert not [n for n in transposed if not any(a.name == "group" and a.i > 1 for a in n.attribute)]
