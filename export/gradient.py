"""Tracing functions that call autograd into plain forward graphs, so dE/dz can be exported to ONNX.

torch.onnx cannot export a module whose forward calls torch.autograd.grad. make_fx can: it runs the
function (backward included) on symbolic tensors and records every aten op, decomposed by the
table below into ops that have ONNX functions. Frozen parameters become constants of the graph; the
activations stay functions of the inputs (a "real"-mode trace would freeze the batch size instead).
"""
from __future__ import annotations

import torch
from torch._decomp import core_aten_decompositions

aten = torch.ops.aten


def _conv_input_grad(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                     output_padding, groups, output_mask):
    """aten.convolution_backward for frozen weights: only the input gradient, as a forward conv.
    The gradient of conv is conv_transpose with the same weight (and vice versa); output_padding
    restores the input size that strided conv rounded away."""
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("weight/bias gradients are not exported: freeze the parameters")
    dims = range(weight.dim() - 2)
    if not transposed:
        out_pad = [input.shape[i + 2] - ((grad_output.shape[i + 2] - 1) * stride[i] - 2 * padding[i]
                                         + dilation[i] * (weight.shape[i + 2] - 1) + 1) for i in dims]
        grad = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, out_pad, groups)
    else:
        grad = aten.convolution(grad_output, weight, None, stride, padding, dilation, False, [0 for _ in dims],
                                groups)
    return grad, None, None


def decompositions() -> dict:
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _conv_input_grad
    return table


def trace(fn, example_inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """fn(*tensors) -> tensors, traced with a dynamic batch into one forward graph (backward included)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # The fused attention kernels' backward has no ONNX function: trace the math path.
    with sdpa_kernel(SDPBackend.MATH):
        return make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic",
                       _allow_non_fake_inputs=True)(*example_inputs)
