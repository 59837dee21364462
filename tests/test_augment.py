"""DiffAugment with explicit randomness equals the reference's index-based ops for the same draws."""
import pytest
import torch
import torch.nn.functional as F

from tr0n_rt.export.augment import AugmentConfig, color, cutout_mask, diff_augment, resize_matrix, shift_matrix
from tr0n_rt.export.models.clip import bilinear_matrix


def reference_translation(x, tx, ty):
    """The reference's pad-and-gather translation for integer shifts tx (rows), ty (columns)."""
    n, _, h, w = x.shape
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
    gx = torch.clamp(gx + tx.view(-1, 1, 1) + 1, 0, h + 1)
    gy = torch.clamp(gy + ty.view(-1, 1, 1) + 1, 0, w + 1)
    pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def reference_resize(x, ratio):
    """The reference's resize: bilinear to int(ratio * W), then centre pad or crop."""
    w = x.shape[-1]
    n = int(ratio * w)
    y = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
    if n < w:
        left = int((w - n) / 2)
        return F.pad(y, [left, w - n - left, left, w - n - left])
    start = int((n - w) / 2)
    return y[..., start:start + w, start:start + w]


def reference_cutout(x, ox, oy, ratio=0.5):
    n, _, h, w = x.shape
    side = int(h * ratio + 0.5)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(side), torch.arange(side), indexing="ij")
    gx = torch.clamp(gx + ox.view(-1, 1, 1) - side // 2, 0, h - 1)
    gy = torch.clamp(gy + oy.view(-1, 1, 1) - side // 2, 0, w - 1)
    mask = torch.ones(n, h, w)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


@pytest.mark.parametrize("size", [16, 17, 32])
def test_translation_matrix_equals_pad_and_gather(size):
    torch.manual_seed(0)
    x = torch.randn(9, 3, size, size)
    u = torch.rand(9, 2)
    s = int(size * 0.125 + 0.5)
    shifts = torch.floor(u * (2 * s + 1)).long() - s
    rows, cols = shift_matrix(u[:, 0], size, 0.125), shift_matrix(u[:, 1], size, 0.125)
    ours = rows[:, None] @ x @ cols[:, None].transpose(-1, -2)
    torch.testing.assert_close(ours, reference_translation(x, shifts[:, 0], shifts[:, 1]))


@pytest.mark.parametrize("ratio", [0.8, 0.87, 0.95, 1.0, 1.07, 1.19])
def test_resize_matrix_equals_interpolate_pad_crop(ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    u = torch.full((2,), (ratio - 0.8) / 0.4)
    r = resize_matrix(u, 32, 0.8, 1.2)
    ours = r[:, None] @ x @ r[:, None].transpose(-1, -2)
    torch.testing.assert_close(ours, reference_resize(x, float(0.8 + 0.4 * u[0])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [16, 32])
def test_cutout_mask_equals_reference(size):
    torch.manual_seed(0)
    x = torch.randn(12, 3, size, size)
    u = torch.rand(12, 2)
    side = int(size * 0.5 + 0.5)
    offs = torch.floor(u * (size + 1 - side % 2)).long()
    ours = x * cutout_mask(u[:, 0], u[:, 1], size, 0.5)
    torch.testing.assert_close(ours, reference_cutout(x, offs[:, 0], offs[:, 1]))


def test_color_equals_reference_formulas():
    torch.manual_seed(0)
    x, u = torch.randn(4, 3, 8, 8), torch.rand(4, 8)
    y = x + (u[:, 0] - 0.5).view(-1, 1, 1, 1)
    m = y.mean(1, keepdim=True)
    y = (y - m) * (u[:, 1] * 2).view(-1, 1, 1, 1) + m
    m = y.mean([1, 2, 3], keepdim=True)
    y = (y - m) * (u[:, 2] + 0.5).view(-1, 1, 1, 1) + m
    torch.testing.assert_close(color(x, u), y)


def test_full_policy_is_differentiable_and_depends_on_the_noise():
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    cfg = AugmentConfig()
    u1, u2 = torch.rand(3, 8), torch.rand(3, 8)
    a = diff_augment(x, u1, cfg)
    (g,) = torch.autograd.grad(a.square().sum(), x)
    assert g.abs().sum() > 0
    assert not torch.allclose(a, diff_augment(x, u2, cfg))
    torch.testing.assert_close(a, diff_augment(x, u1, cfg))


def test_bilinear_matrix_equals_interpolate():
    x = torch.randn(2, 3, 32, 32)
    for dst in (16, 24, 64, 224):
        a = bilinear_matrix(32, dst)
        torch.testing.assert_close(a @ x @ a.T, F.interpolate(x, size=dst, mode="bilinear", align_corners=False),
                                   rtol=1e-5, atol=5e-5)  # float32 rounding of the weights


@pytest.mark.parametrize("size", [16, 17, 32, 64])
def test_identity_noise_leaves_the_image_unchanged(size):
    from tr0n_rt.graphs import AUG_DIM, IDENTITY_AUG  # the contract's no-augmentation copy

    x = torch.randn(2, 3, size, size)
    u = torch.tensor(IDENTITY_AUG).expand(2, AUG_DIM)
    torch.testing.assert_close(diff_augment(x, u, AugmentConfig()), x, rtol=1e-5, atol=1e-5)
