"""Activation memory counted from ONNX graphs (export/memory_count.py): hand-counted graphs, the bilinear
fit against the direct count on the shapes world's step graphs, and the errors that keep it honest."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tr0n_rt.export.memory_count import activation_rows, live_peak, peak_bytes

SHAPES = Path(__file__).resolve().parents[1] / "engines" / "shapes"
F32, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _rows(rows) -> set:
    return {tuple(r) for r in rows}


def test_hand_counted_graph():
    # x [b, a, 4] f32 (16ab bytes, live all run) -> Relu r -> Mul(r, r) m -> ReduceSum over copies y [b, 4]
    # node 0 Constant (a weight): x = 16ab; node 1 Relu: x + r = 32ab; node 2 Mul: x + r + m = 48ab;
    # node 3 ReduceSum: x + m + y = 32ab + 16b (r was freed after the Mul)
    nodes = [helper.make_node("Constant", [], ["axes"], value=_ints("axes", [1])),
             helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "r"], ["m"]),
             helper.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", "copies", 4])],
                   [helper.make_tensor_value_info("y", F32, ["batch", 4])])
    rows = activation_rows(model)
    assert _rows(rows) == {(0.0, 0.0, 0.0, 48.0), (0.0, 16.0, 0.0, 32.0)}
    for b, a in [(1, 1), (3, 7), (16, 50)]:
        assert peak_bytes(rows, b, a) == 48 * b * a
        assert live_peak(model, {"batch": b, "copies": a}) == 48 * b * a


def test_unread_outputs_are_freed_after_their_node_and_graph_outputs_kept():
    # node 0 Neg d (read by nobody): x + d = 32b; node 1 Relu: x + y = 32b (48b if d stayed live);
    # node 2 Sigmoid: x + y + z = 48b (y, a graph output, stays live to the end)
    nodes = [helper.make_node("Neg", ["x"], ["d"]), helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Sigmoid", ["x"], ["z"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 4])],
                   [helper.make_tensor_value_info(o, F32, ["batch", 4]) for o in ("y", "z")])
    assert _rows(activation_rows(model)) == {(0.0, 48.0, 0.0, 0.0)}


def test_float16_tensors_count_two_bytes():
    # x [b, 8] f32 = 32b; h, hr f16 = 16b each; y f32 = 32b. Cast: 48b; Relu: 64b; Cast back: x + hr + y = 80b
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=F16), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Cast", ["hr"], ["y"], to=F32)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 8])],
                   [helper.make_tensor_value_info("y", F32, ["batch", 8])])
    rows = activation_rows(model)
    assert rows == [[0.0, 80.0, 0.0, 0.0]]
    assert peak_bytes(rows, 5, 9) == live_peak(model, {"batch": 5}) == 400


def test_reshape_to_a_computed_shape_is_folded():
    # view(x, b, -1): Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])); shape inference alone leaves
    # the dims of v unknown. Shape s 24 bytes, Gather g 8, Unsqueeze u 8, Concat c 16, v and y 16ab.
    # Gather: x + s + g = 16ab + 32; Reshape: x + c + v = 32ab + 16; Relu: x + v + y = 48ab
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["g"]),
             helper.make_node("Unsqueeze", ["g", "axis0"], ["u"]),
             helper.make_node("Concat", ["u", "minus_one"], ["c"], axis=0),
             helper.make_node("Reshape", ["x", "c"], ["v"]), helper.make_node("Relu", ["v"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", "copies", 4])],
                   [helper.make_tensor_value_info("y", F32, None)],
                   [_ints("zero", 0), _ints("axis0", [0]), _ints("minus_one", [-1])])
    assert _rows(activation_rows(model)) == {(0.0, 0.0, 0.0, 48.0), (16.0, 0.0, 0.0, 32.0), (32.0, 0.0, 0.0, 16.0)}


def test_weights_stay_on_disk_and_fixed_axes(tmp_path):
    # x [b, 4] @ W [4, 4] -> y [b, 4]: 16b + 16b; W lives in a .data file that is deleted before counting
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", F32, ["batch", 4])],
                   [helper.make_tensor_value_info("y", F32, ["batch", 4])], [w])
    path = tmp_path / "g.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    (tmp_path / "g.onnx.data").unlink()
    assert activation_rows(path) == [[0.0, 32.0, 0.0, 0.0]]
    fixed = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", F32, [2, "width"])],
                   [helper.make_tensor_value_info("y", F32, [2, "width"])])
    assert activation_rows(fixed, {"width": 3}) == [[48.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="width"):
        activation_rows(fixed)
    with pytest.raises(ValueError, match="batch"):
        activation_rows(fixed, {"width": 3, "batch": 2})


def test_a_size_that_is_not_bilinear_is_refused():
    # outer = x[:, None] * x[None, :] is [b, b]: b * b bytes, which no c0 + c1 b + c2 a + c3 b a fits
    nodes = [helper.make_node("Unsqueeze", ["x", "axis1"], ["column"]),
             helper.make_node("Unsqueeze", ["x", "axis0"], ["row"]),
             helper.make_node("Mul", ["column", "row"], ["outer"]),
             helper.make_node("ReduceSum", ["outer"], ["y"], keepdims=0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch"])],
                   [helper.make_tensor_value_info("y", F32, [])], [_ints("axis0", [0]), _ints("axis1", [1])])
    with pytest.raises(ValueError, match="not bilinear.*outer"):
        activation_rows(model)
    assert live_peak(model, {"batch": 10}) == 4 * (10 + 10 + 10 + 10 * 10)  # at the Mul: x, column, row, outer


def test_unknown_dims_are_refused_by_name():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Cast", ["nz"], ["y"], to=F32)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 4])],
                   [helper.make_tensor_value_info("y", F32, None)])
    with pytest.raises(ValueError, match=r"2 tensor\(s\) without known dims.*nz \(NonZero\), y \(Cast\)"):
        activation_rows(model)


def test_subgraphs_are_not_counted():
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", F32, None)])
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                   [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                    helper.make_tensor_value_info("x", F32, ["batch"])],
                   [helper.make_tensor_value_info("y", F32, None)])
    with pytest.raises(NotImplementedError, match="If"):
        activation_rows(model)


@pytest.mark.parametrize("name", ["step.onnx", "step.fp16.onnx"])
def test_fit_matches_the_direct_count_on_the_step_graph(name):
    k = json.loads((SHAPES / "manifest.json").read_text())["mixture"]["components"]
    rows = activation_rows(SHAPES / name, {"components": k})
    assert len(rows) > 1 and any(r[3] > 0 for r in rows)  # the copies x batch images dominate
    for b, a in [(1, 3), (4, 8), (16, 50)]:  # none of them a fitting point
        assert peak_bytes(rows, b, a) == live_peak(SHAPES / name, {"batch": b, "copies": a, "components": k})
    with pytest.raises(ValueError, match="components"):
        live_peak(SHAPES / name, {"batch": 1, "copies": 1})


def test_graphs_without_copies_have_no_copies_terms():
    rows = activation_rows(SHAPES / "generator.onnx")
    assert rows and all(r[2] == r[3] == 0 and r[1] > 0 for r in rows)
    assert peak_bytes(rows, 16, 1) == peak_bytes(rows, 16, 50) == live_peak(SHAPES / "generator.onnx", {"batch": 16})
