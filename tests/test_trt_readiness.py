"""TensorRT readiness of the shipped bundles' graphs (engines/shapes, engines/digits, float32 and FP16):
onnx.checker's full check, strict shape inference, every output computed by a node, and only the ops,
types and restrictions of TensorRT's ONNX parser (export/trt_ops.py). Then the checks themselves, on
hand-made graphs that break one rule each, and the fixes that make the exported graphs pass."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tr0n_rt.export import trt_ops
from tr0n_rt.export.fp16 import to_fp16
from tr0n_rt.export.onnx_fixes import FLOAT32_TAG, decompose_layer_norms, infer_shapes, outputs_from_nodes
from tr0n_rt.export.validate import run_onnx

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def shipped_graphs() -> list:
    files = []
    for world in ("shapes", "digits"):
        manifest = json.loads((ENGINES / world / "manifest.json").read_text())
        for entry in manifest["graphs"].values():
            files += [pytest.param(ENGINES / world / f, id=f"{world}/{f}") for f in entry["files"].values()]
    return files


SHIPPED = shipped_graphs()


def test_both_bundles_list_float32_and_fp16_graphs():
    names = {p.id for p in SHIPPED}
    assert {"shapes/text_encoder.onnx", "shapes/text_encoder.fp16.onnx", "shapes/step.fp16.onnx",
            "digits/translator.onnx", "digits/step.fp16.onnx"} <= names, names


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_graph_passes_the_full_checker_and_strict_inference(path):
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_graph_is_what_tensorrts_parser_takes(path):
    model = onnx.load(str(path))
    assert trt_ops.bare_outputs(model) == []
    assert trt_ops.unsupported_ops(model) == []
    infer_shapes(model, strict=True)
    assert trt_ops.type_problems(model) == []
    assert trt_ops.restriction_problems(model) == []
    assert trt_ops.file_problems(path) == []


# --- the checks can fail ------------------------------------------------------------------------------

def model_of(nodes, inputs, outputs, initializers=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def value(name, elem=TensorProto.FLOAT, shape=("n", 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def problems_of(model, tmp_path) -> list[str]:
    onnx.save(model, str(tmp_path / "m.onnx"))
    return trt_ops.file_problems(tmp_path / "m.onnx")


def test_a_plain_graph_passes(tmp_path):
    model = model_of([helper.make_node("Relu", ["x"], ["y"])], [value("x")], [value("y")])
    assert problems_of(model, tmp_path) == []


@pytest.mark.parametrize("node, why", [
    (helper.make_node("Unique", ["x"], ["y"]), "ai.onnx::Unique"),
    (helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft"), "com.microsoft::Gelu"),
    (helper.make_node("LayerNormalization", ["x", "scale"], ["y"]), "LayerNormalization (onnx-tensorrt 10.1"),
])
def test_an_unsupported_or_refused_op_is_flagged(tmp_path, node, why):
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.microsoft", 1)] if node.domain else [])
    graph = helper.make_graph([node], "g", [value("x")], [value("y")], [const("scale", np.ones(4, np.float32))])
    model = helper.make_model(graph, opset_imports=opsets)
    assert any(why in p for p in trt_ops.unsupported_ops(model)), trt_ops.unsupported_ops(model)
    assert any(why in p for p in problems_of(model, tmp_path))


def test_an_initializer_output_is_flagged_and_routed_through_an_identity(tmp_path):
    """The translators' std: a folded constant output. Flagged; outputs_from_nodes fixes it, same values."""
    model = model_of([helper.make_node("Relu", ["x"], ["y"])], [value("x")], [value("y"), value("std", shape=[4])],
                     [const("std", np.arange(4, dtype=np.float32))])
    assert trt_ops.bare_outputs(model) == ["std"]
    assert "output 'std' is not computed by a node" in problems_of(model, tmp_path)
    assert outputs_from_nodes(model) == 1 and outputs_from_nodes(model) == 0
    assert trt_ops.bare_outputs(model) == [] and problems_of(model, tmp_path) == []
    (out,) = run_onnx(tmp_path / "m.onnx", [{"x": np.ones((2, 4), np.float32)}])
    np.testing.assert_array_equal(out["std"], np.arange(4, dtype=np.float32))


def test_a_constant_node_output_is_flagged_and_routed(tmp_path):
    c = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(4, np.float32)))
    model = model_of([c, helper.make_node("Add", ["x", "k"], ["y"])], [value("x")], [value("y"), value("k", shape=[4])])
    assert trt_ops.bare_outputs(model) == ["k"]
    assert outputs_from_nodes(model) == 1 and trt_ops.bare_outputs(model) == []
    assert problems_of(model, tmp_path) == []  # the Add reads the constant under its new name: still sorted


def test_a_double_tensor_and_a_double_cast_are_flagged(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)]
    problems = problems_of(model_of(nodes, [value("x")], [value("y")]), tmp_path)
    assert "type: d: DOUBLE" in problems and any("(Cast): to DOUBLE" in p for p in problems), problems


def test_data_of_a_type_the_op_does_not_take_is_flagged(tmp_path):
    """Relu on INT8 is valid ONNX (the checker passes it); the matrix lists FP32/FP16/BF16/INT32/INT64."""
    model = model_of([helper.make_node("Relu", ["x"], ["y"])], [value("x", TensorProto.INT8)],
                     [value("y", TensorProto.INT8)])
    problems = problems_of(model, tmp_path)
    assert any("(Relu): INT8 input 'x'" in p for p in problems), problems


def test_mixed_precision_batch_norm_is_flagged(tmp_path):
    """Valid ONNX (opset 15 on, X and the statistics may differ in type): FP16 data, float32 statistics."""
    inits = [const(n, np.ones(3, np.float32)) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    model = model_of([node], [value("x", TensorProto.FLOAT16, (1, 3, 2, 2))],
                     [value("y", TensorProto.FLOAT16, (1, 3, 2, 2))], inits)
    assert any("inputs of mixed types" in p for p in problems_of(model, tmp_path))


def test_reduce_axes_that_are_not_constants_are_flagged(tmp_path):
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)
    y = value("y", shape=("n", 1))
    model = model_of([node], [value("x"), value("axes", TensorProto.INT64, [1])], [y])
    assert any("(ReduceMean): input 1 ('axes') is not an initializer" in p for p in problems_of(model, tmp_path))
    model = model_of([node], [value("x")], [y], [const("axes", np.array([1], np.int64))])
    assert problems_of(model, tmp_path) == []


def test_a_resize_mode_the_parser_lacks_is_flagged(tmp_path):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    model = model_of([node], [value("x", shape=(1, 1, 2, 2))], [value("y", shape=(1, 1, 4, 4))],
                     [const("scales", np.array([1, 1, 2, 2], np.float32))])
    assert any("mode = 'cubic'" in p for p in problems_of(model, tmp_path))


def test_a_stale_value_info_fails_the_checker(tmp_path):
    """What 7 shipped FP16 graphs had: an initializer stored float32 but declared FLOAT16."""
    model = model_of([helper.make_node("Add", ["x", "w"], ["y"])], [value("x")], [value("y")],
                     [const("w", np.ones(4, np.float32))])
    model.graph.value_info.append(helper.make_tensor_value_info("w", TensorProto.FLOAT16, [4]))
    assert any(p.startswith("onnx.checker") for p in problems_of(model, tmp_path))


# --- the fixes ----------------------------------------------------------------------------------------

def layer_norm_model(axis: int, extra_outputs: bool) -> onnx.ModelProto:
    """MatMul -> LayerNormalization(axis) -> MatMul, optionally also returning Mean and InvStdDev."""
    rng = np.random.default_rng(0)
    norm_shape = ["b", 3, 16][axis:]  # scale and bias: the normalised axes
    inits = [const("w1", rng.standard_normal((8, 16)).astype(np.float32)),
             const("w2", rng.standard_normal((16, 4)).astype(np.float32)),
             const("scale", rng.standard_normal(norm_shape).astype(np.float32)),
             const("bias", rng.standard_normal(norm_shape).astype(np.float32))]
    outs = ["n", "mean", "inv_std"] if extra_outputs else ["n"]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("LayerNormalization", ["h", "scale", "bias"], outs, name="ln", axis=axis,
                              epsilon=1e-3),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="mm2")]
    stats = ["b", 3, 1] if axis == -1 else ["b", 1, 1]
    outputs = [value("y", shape=["b", 3, 4])] + ([value("mean", shape=stats), value("inv_std", shape=stats)]
                                                 if extra_outputs else [])
    return model_of(nodes, [value("x", shape=["b", 3, 8])], outputs, inits)


@pytest.mark.parametrize("axis, extra_outputs", [(-1, False), (1, True), (-2, True)])
def test_layer_norms_are_decomposed_with_the_same_results(tmp_path, axis, extra_outputs):
    model = layer_norm_model(axis, extra_outputs)
    onnx.save(model, str(tmp_path / "ln.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32) * 30
    (want,) = run_onnx(tmp_path / "ln.onnx", [{"x": x}])
    assert decompose_layer_norms(model) == 1 and decompose_layer_norms(model) == 0
    assert trt_ops.unsupported_ops(model) == [] and all(n.op_type != "LayerNormalization" for n in model.graph.node)
    assert problems_of(model, tmp_path) == []
    (got,) = run_onnx(tmp_path / "m.onnx", [{"x": x}])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())


def test_decomposed_layer_norms_stay_float32_in_fp16_graphs(tmp_path):
    """The decomposed nodes run in float32 inside the FP16 graph (as LayerNormalization did), the FP16
    graph passes every check, and ONNX Runtime loads and runs it (its LayerNormFusion once fused the Pow
    form behind an FP16 -> float32 Cast into a mixed-type node that no session could load)."""
    model = layer_norm_model(-1, False)
    onnx.save(model, str(tmp_path / "ln.onnx"))
    decompose_layer_norms(model)
    m16 = to_fp16(model)
    infer_shapes(m16, strict=True)
    types = {v.name: v.type.tensor_type.elem_type for v in m16.graph.value_info}
    island = [n for n in m16.graph.node if FLOAT32_TAG in n.name and n.op_type != "Cast"]  # the converter's
    assert len(island) == 9 and all(types[o] == TensorProto.FLOAT for n in island for o in n.output)
    assert {n.op_type for n in island} == {"ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div"}  # Pow -> Mul(d, d)
    assert problems_of(m16, tmp_path) == []
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    (want,), (got,) = run_onnx(tmp_path / "ln.onnx", [{"x": x}]), run_onnx(tmp_path / "m.onnx", [{"x": x}])
    assert np.linalg.norm(got["y"] - want["y"]) / np.linalg.norm(want["y"]) < 2e-3


def test_fp16_conversion_leaves_no_stale_value_info(tmp_path):
    """An initializer read only by a float32 node stays float32; its value_info entry (as the exporter
    writes one for every weight) must not still say FLOAT16."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Div", ["h", "c"], ["y"], name="div")]  # Div stays float32 (fp16.FP32_OPS)
    model = model_of(nodes, [value("x")], [value("y", shape=("n", 3))],
                     [const("w", np.ones((4, 3), np.float32)), const("c", np.full(3, 7.0, np.float32))])
    model.graph.value_info.extend([helper.make_tensor_value_info("c", TensorProto.FLOAT, [3]),
                                   helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])])
    m16 = to_fp16(model)
    assert {t.name: t.data_type for t in m16.graph.initializer}["c"] == TensorProto.FLOAT
    assert problems_of(m16, tmp_path) == []
