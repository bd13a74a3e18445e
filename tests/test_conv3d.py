"""cmedl.nets.conv3d: the split single-volume 3D convolution equals F.conv3d and avoids ATen's slow path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmedl.nets.conv3d import Conv3d, conv3d, needs_split
from cmedl.nets.fastconv import fast_path_disabled
from cmedl.nets.ts_unet3d import build_ts_unet3d


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


CASES = [
    # shape, kernel, stride, padding, dilation
    ((1, 4, 12, 16, 20), 3, 1, 1, 1),
    ((1, 3, 11, 9, 7), 3, 2, 1, 1),  # odd output counts: the two halves overlap by one output
    ((1, 2, 9, 8, 13), 3, 2, 0, 1),
    ((1, 2, 9, 10, 11), 3, 1, 2, 2),
    ((1, 4, 8, 8, 8), 1, 1, 0, 1),
    ((1, 3, 6, 10, 5), (3, 1, 3), (1, 2, 1), (1, 0, 2), 1),
    ((1, 2, 6, 8, 8), 2, 2, 0, 1),
]


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", CASES)
def test_split_equals_conv3d_values_and_gradients(shape, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    k = kernel if isinstance(kernel, tuple) else (kernel,) * 3
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(5, shape[1], *k, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    assert needs_split(x, padding)
    ref = F.conv3d(x, w, b, stride, padding, dilation)
    out = conv3d(x, w, b, stride, padding, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_split_takes_onednn_where_plain_conv3d_falls_back_to_the_slow_path():
    x = torch.randn(1, 8, 16, 32, 32, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, 3, requires_grad=True)
    plain = _ops(lambda: F.conv3d(x, w, None, 1, 1).sum().backward())
    split = _ops(lambda: conv3d(x, w, None, 1, 1).sum().backward())
    assert "aten::slow_conv3d_forward" in plain  # the ATen heuristic this module works around
    assert "aten::slow_conv3d_forward" not in split
    assert "aten::mkldnn_convolution" in split


def test_plain_where_the_split_does_not_apply():
    w = torch.randn(4, 4, 3, 3, 3)
    batch = torch.randn(2, 4, 8, 8, 8)
    assert not needs_split(batch, 1)  # batches already use oneDNN
    assert not needs_split(torch.randn(1, 4, 8, 8, 8, dtype=torch.float64), 1)
    assert not needs_split(torch.randn(1, 4, 8, 8, 8), "same")
    assert not needs_split(torch.randn(1, 4, 2, 4, 4), 1)  # too small to gain
    assert not needs_split(torch.randn(1, 64, 32, 32, 32), 1)  # N*C*D*H > 20480: oneDNN anyway
    with fast_path_disabled():
        assert not needs_split(torch.randn(1, 4, 8, 8, 8), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not needs_split(torch.randn(1, 4, 8, 8, 8), 1)
    # one output along every axis: nothing to split, plain result
    x = torch.randn(1, 4, 3, 3, 3)
    torch.testing.assert_close(conv3d(x, w, None, 1, 0), F.conv3d(x, w, None, 1, 0))


def test_conv3d_module_is_a_drop_in_for_nn_conv3d():
    torch.manual_seed(0)
    ours = Conv3d(3, 6, 3, stride=2, padding=1)
    plain = torch.nn.Conv3d(3, 6, 3, stride=2, padding=1)
    plain.load_state_dict(ours.state_dict())  # same keys and shapes
    x = torch.randn(1, 3, 10, 14, 12)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    reflect = Conv3d(3, 6, 3, padding=1, padding_mode="reflect")
    plain_reflect = torch.nn.Conv3d(3, 6, 3, padding=1, padding_mode="reflect")
    plain_reflect.load_state_dict(reflect.state_dict())
    torch.testing.assert_close(reflect(x), plain_reflect(x))


def test_ts_unet3d_gradients_match_with_and_without_the_split():
    torch.manual_seed(0)
    net = build_ts_unet3d(1, base_width=4, levels=3)
    x = torch.randn(1, 1, 16, 24, 24)

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        out = net(x)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    out_split, g_split = grads()
    with fast_path_disabled():
        out_plain, g_plain = grads()
    torch.testing.assert_close(out_split, out_plain, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_split, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_inference_copies_keep_the_split_convolutions():
    from cmedl.nets.predict import inference_copy
    from cmedl.nets.unet3d import UNet3D

    net = UNet3D(1, 1, base_width=4).eval()
    copy = inference_copy(net, torch.device("cpu"))  # folds BatchNorm into the convolutions
    convs = [m for m in copy.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(isinstance(m, Conv3d) for m in convs)
