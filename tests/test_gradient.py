"""The backward decompositions that make gradient graphs exportable equal torch's own backward."""
import pytest
import torch
import torch.nn.functional as F

from tr0n_rt.export.gradient import _avg_pool2d_input_grad, _conv_input_grad


@pytest.mark.parametrize("stride,padding,size", [(1, 0, 9), (2, 1, 9), (2, 1, 10), (3, 0, 11)])
@pytest.mark.parametrize("transposed", [False, True])
def test_conv_input_gradient(stride, padding, size, transposed):
    torch.manual_seed(0)
    x = torch.randn(2, 4, size, size, requires_grad=True)
    w = torch.randn(4, 6, 3, 3) if transposed else torch.randn(6, 4, 3, 3)
    y = (F.conv_transpose2d if transposed else F.conv2d)(x, w, stride=stride, padding=padding)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    ours, _, _ = _conv_input_grad(g, x, w, None, [stride] * 2, [padding] * 2, [1, 1], transposed, [0, 0], 1,
                                  [True, False, False])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,padding,dilation,groups", [(3, 1, 1, 1), (3, 0, 1, 1), (3, 2, 1, 1), (1, 0, 1, 1),
                                                            (5, 2, 2, 1), (3, 1, 1, 2), (3, 3, 1, 1)])
def test_stride_1_conv_input_gradient_with_padding_dilation_and_groups(kernel, padding, dilation, groups):
    """The input gradient equals torch's backward for the stride-1 convs that onnx_fixes.conv_grads_as_conv
    later turns into forward convs, and for those it leaves (groups > 1, padding beyond d (k - 1))."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    w = torch.randn(6, 4 // groups, kernel, kernel)
    y = F.conv2d(x, w, padding=padding, dilation=dilation, groups=groups)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    ours, _, _ = _conv_input_grad(g, x, w, None, [1, 1], [padding] * 2, [dilation] * 2, False, [0, 0], groups,
                                  [True, False, False])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,dilation,output_padding", [(2, 1, 1), (1, 2, 1), (2, 3, 2), (3, 1, 2)])
def test_transposed_conv_input_gradient_with_output_padding(stride, dilation, output_padding):
    """Including output_padding >= stride (torch allows it below max(stride, dilation)), where the forward
    conv that is the gradient returns extra rows."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 9, requires_grad=True)
    w = torch.randn(4, 3, 3, 3)
    y = F.conv_transpose2d(x, w, stride=stride, padding=1, output_padding=output_padding, dilation=dilation)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    ours, _, _ = _conv_input_grad(g, x, w, None, [stride] * 2, [1, 1], [dilation] * 2, True, [output_padding] * 2,
                                  1, [True, False, False])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_traced_relu_gradient_has_no_where():
    """The traced backward of conv -> relu -> conv takes ReLU's gradient as a product, not a where (the
    stride-1 conv gradients become forward convs after export: tests/test_export.py)."""
    from tr0n_rt.export.gradient import trace

    w1, w2 = torch.randn(8, 3, 3, 3), torch.randn(4, 8, 3, 3)

    def grad_of(x):
        x = x.requires_grad_(True)
        e = F.conv2d(F.relu(F.conv2d(x, w1, padding=1)), w2, padding=1).square().sum()
        return torch.autograd.grad(e, x)[0]

    x = torch.randn(2, 3, 8, 8)
    gm = trace(grad_of, (x,))
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.where.self not in ops and torch.ops.aten.gt.Scalar in ops, ops
    ours, expected = gm(x.clone()), grad_of(x.clone())
    assert ((ours - expected).norm() / expected.norm()).item() < 1e-5  # float32 sums in another order


def test_relu_gradient_is_a_mask_product():
    from tr0n_rt.export.gradient import _threshold_input_grad

    x = torch.tensor([-1.0, 0.0, 2.0, 3.0], requires_grad=True)
    y = F.relu(x)
    g = torch.tensor([5.0, 6.0, 7.0, float("inf")])
    (expected,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(_threshold_input_grad(g, y.detach(), 0.0), expected)
    assert _threshold_input_grad(torch.tensor([float("inf")]), torch.tensor([-1.0]), 0.0).isnan().all()  # documented


@pytest.mark.parametrize("kernel,stride,padding,size", [(2, 2, 0, 8), (2, 2, 0, 9), (3, 2, 1, 9), (3, 1, 1, 6)])
def test_avg_pool_input_gradient(kernel, stride, padding, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, requires_grad=True)
    y = F.avg_pool2d(x, kernel, stride, padding)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    ours = _avg_pool2d_input_grad(g, x, [kernel], [stride], [padding], False, True)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_unsupported_pooling_is_refused_not_approximated():
    x, g = torch.randn(1, 1, 6, 6), torch.randn(1, 1, 3, 3)
    with pytest.raises(NotImplementedError):
        _avg_pool2d_input_grad(g, x, [3], [2], [1], False, False)


@pytest.mark.parametrize("start,end", [(0, 5), (5, 11), (-3, None), (2, 100)])
def test_slice_gradient_is_a_pad(start, end):
    from tr0n_rt.export.gradient import _slice_backward

    x = torch.randn(3, 20, requires_grad=True)
    y = x[:, start:end]
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    stop = end if end is not None else 2**62
    torch.testing.assert_close(_slice_backward(g, list(x.shape), 1, start, stop, 1), expected)


@pytest.mark.parametrize("index", [0, 4, -1])
def test_select_gradient_is_a_pad(index):
    from tr0n_rt.export.gradient import _select_backward

    x = torch.randn(3, 5, 2, requires_grad=True)
    y = x[:, index]
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(_select_backward(g, list(x.shape), 1, index), expected)
