"""cmedl.nets.fastconv: the faster CPU path of single-channel large-kernel convolutions equals nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmedl.nets import ResnetGenerator
from cmedl.nets.fastconv import SingleChannelConv2d, fast_path_disabled, space_to_depth_conv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(cin: int, cout: int, k, padding, bias: bool = True) -> tuple[nn.Conv2d, SingleChannelConv2d]:
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, k, padding=padding, bias=bias)
    fast = SingleChannelConv2d(cin, cout, k, padding=padding, bias=bias)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _value_and_grads(conv: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(x.requires_grad)
    y = conv(x)
    inputs = ([x] if x.requires_grad else []) + list(conv.parameters())
    return [y.detach(), *torch.autograd.grad(y, inputs, g)]


@pytest.mark.parametrize(
    ("cin", "cout", "k", "padding", "shape", "x_grad"),
    [
        (1, 6, 7, 0, (2, 1, 22, 19), True),  # generator's first layer shape, odd sizes
        (1, 6, 7, 3, (2, 1, 16, 16), True),
        (5, 1, 7, 0, (3, 5, 21, 18), True),  # generator's last layer
        (5, 1, 7, 2, (2, 5, 16, 13), False),
        (3, 1, (5, 6), (1, 2), (2, 3, 13, 11), True),  # rectangular kernel and padding
        (1, 3, (6, 5), (2, 1), (2, 1, 13, 11), True),
    ],
)
def test_single_channel_conv_equals_conv2d(cin, cout, k, padding, shape, x_grad) -> None:
    ref, fast = _pair(cin, cout, k, padding)
    torch.manual_seed(1)
    x = torch.randn(shape).requires_grad_(x_grad)
    g = torch.randn_like(ref(x))
    want, got = _value_and_grads(ref, x, g), _value_and_grads(fast, x, g)
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_fast_path_is_taken_only_where_it_helps() -> None:
    _, out1 = _pair(4, 1, 7, 0)
    _, in1 = _pair(1, 4, 7, 0)
    x4, x1 = torch.randn(2, 4, 16, 16), torch.randn(2, 1, 16, 16)
    # one output channel: a space-to-depth convolution (cropped pixel_shuffle output)
    assert "Convolution" not in type(out1(x4).grad_fn).__name__
    # one input channel: only when the input needs its gradient
    assert "OneInputChannel" in type(in1(x1.requires_grad_()).grad_fn).__name__
    assert type(in1(x1.detach()).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert out1(x4).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(out1(x4).grad_fn).__name__ == "ConvolutionBackward0"
    with fast_path_disabled():
        assert type(out1(x4).grad_fn).__name__ == "ConvolutionBackward0"
    assert "Convolution" not in type(out1(x4).grad_fn).__name__  # restored after the block
    small = SingleChannelConv2d(4, 1, 3, padding=1)  # kernels under 5x5 gain nothing
    assert type(small(x4).grad_fn).__name__ == "ConvolutionBackward0"
    strided = SingleChannelConv2d(4, 1, 7, stride=2)
    assert type(strided(x4).grad_fn).__name__ == "ConvolutionBackward0"


def test_single_channel_conv_is_a_drop_in_conv2d() -> None:
    ref, fast = _pair(8, 1, 7, 3)
    assert isinstance(fast, nn.Conv2d)
    assert ref.state_dict().keys() == fast.state_dict().keys()
    with pytest.raises(ValueError, match="in_channels == 1 or out_channels == 1"):
        SingleChannelConv2d(2, 3, 7)
    with pytest.raises(ValueError, match="does not match"):
        space_to_depth_conv2d(torch.randn(1, 3, 9, 9), torch.randn(1, 2, 7, 7))


def test_generator_is_the_same_with_and_without_the_fast_path() -> None:
    torch.manual_seed(0)
    gen = ResnetGenerator(1, 1, base_width=4, n_blocks=1)
    x = torch.rand(2, 1, 24, 20, requires_grad=True) * 2 - 1

    def run() -> list[torch.Tensor]:
        y = gen(x)
        return [y.detach(), *torch.autograd.grad((y * y).sum(), [x, *gen.parameters()])]

    fast = run()
    with fast_path_disabled():
        plain = run()
    for a, b in zip(plain, fast, strict=True):
        # atol: biases before instance norm get ~0 gradients, pure rounding either way
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, float(a.abs().max())))


def test_phase_matrix_cache_survives_inference_mode() -> None:
    from cmedl.nets import fastconv

    fastconv._phase_matrix.cache_clear()
    w = torch.randn(1, 3, 6, 6)
    with torch.inference_mode():
        space_to_depth_conv2d(torch.randn(1, 3, 10, 10), w)  # first use, cached here
    x = torch.randn(2, 3, 13, 11, requires_grad=True)
    y = space_to_depth_conv2d(x, w.requires_grad_())
    assert y.is_contiguous() and y.shape == (2, 1, 8, 6)
    y.sum().backward()  # no "inference tensors cannot be saved for backward"
    assert x.grad is not None and w.grad is not None
