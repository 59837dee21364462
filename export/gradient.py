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
    restores the input size that strided conv rounded away. (Stride-1 input gradients become forward
    convs with a flipped weight after export: onnx_fixes.conv_grads_as_conv.)"""
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
        if list(grad.shape[2:]) != list(input.shape[2:]):  # output_padding >= stride (allowed when dilated)
            grad = grad[(slice(None), slice(None), *(slice(0, n) for n in input.shape[2:]))]
    return grad, None, None


def _avg_pool2d_input_grad(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                           divisor_override=None):
    """aten.avg_pool2d_backward as a depthwise transposed conv with a constant 1/divisor kernel: each
    output gradient is spread evenly over its window (exact when every window has the same divisor)."""
    kh, kw = (list(kernel_size) * 2)[:2]
    sh, sw = (list(stride or kernel_size) * 2)[:2]
    ph, pw = (list(padding) * 2)[:2]
    if ceil_mode or ((ph or pw) and not count_include_pad):
        raise NotImplementedError("avg_pool2d backward with ceil_mode or padding excluded from the count")
    channels = input.shape[1]
    weight = torch.full((channels, 1, kh, kw), 1.0 / (divisor_override or kh * kw), dtype=grad_output.dtype,
                        device=grad_output.device)
    out_pad = [input.shape[2] - ((grad_output.shape[2] - 1) * sh - 2 * ph + kh),
               input.shape[3] - ((grad_output.shape[3] - 1) * sw - 2 * pw + kw)]
    return aten.convolution(grad_output, weight, None, [sh, sw], [ph, pw], [1, 1], True, out_pad, channels)


def _threshold_input_grad(grad_output, self, threshold):
    """aten.threshold_backward (ReLU's backward) as grad * (x > threshold), where the default is
    where(x <= threshold, 0, grad): ONNX Runtime's Where with a broadcast scalar runs single-threaded,
    6x slower than Greater + Cast + Mul. They differ only for a non-finite gradient at a masked
    element (NaN here, 0 there), which an overflowed FP16 backward has anyway and the runtime's FP16
    guard recomputes in float32."""
    return grad_output * (self > threshold).to(grad_output.dtype)


def _pad_along(x: torch.Tensor, dim: int, before, after) -> torch.Tensor:
    dim = dim % x.dim()
    pads = [0, 0] * (x.dim() - dim - 1) + [before, after]  # constant_pad_nd lists the last dim first
    return aten.constant_pad_nd(x, pads, 0.0)


def _slice_backward(grad_output, input_sizes, dim, start, end, step):
    """The gradient of x[..., start:end] is zero-padding, not the slice_scatter (-> ScatterND, a
    TensorRT risk) of the default decomposition. Strided slices keep the default."""
    if step != 1:
        return _DEFAULT_SLICE_BACKWARD(grad_output, input_sizes, dim, start, end, step)
    size = input_sizes[dim]
    start = max(0, min(size, start + size if start < 0 else start))
    end = max(start, min(size, end + size if end < 0 else end))
    return _pad_along(grad_output, dim, start, size - end)


def _select_backward(grad_output, input_sizes, dim, index):
    """The gradient of x.select(dim, index): unsqueeze, then zero-pad."""
    size = input_sizes[dim]
    index = index + size if index < 0 else index
    return _pad_along(grad_output.unsqueeze(dim), dim, index, size - index - 1)


_DEFAULT_SLICE_BACKWARD = core_aten_decompositions()[aten.slice_backward.default]


def decompositions() -> dict:
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _conv_input_grad
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_input_grad
    table[aten.threshold_backward.default] = _threshold_input_grad
    table[aten.slice_backward.default] = _slice_backward
    table[aten.select_backward.default] = _select_backward
    return table


def trace(fn, example_inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """fn(*tensors) -> tensors, traced with a dynamic batch into one forward graph (backward included).

    Every input dimension gets a symbol of its own: with duck shaping (torch's default) dimensions of
    equal example size share one, so the digits world's K = 10 components became its 10 classes' static
    size and the exported step lost its dynamic K."""
    import torch.fx.experimental._config as shape_config
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # The fused attention kernels' backward has no ONNX function: trace the math path.
    with sdpa_kernel(SDPBackend.MATH), shape_config.patch(use_duck_shape=False):
        return make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic",
                       _allow_non_fake_inputs=True)(*example_inputs)
