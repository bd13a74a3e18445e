"""Known-answer and property tests of cmedl.losses (Dice, GAN, cycle, contextual, hint)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cmedl.errors import ConfigError
from cmedl.losses import (
    DEFAULT_CX_LAYERS,
    ContextualLoss,
    GANLoss,
    HintLoss,
    SoftDiceLoss,
    contextual_loss,
    contextual_similarity,
    cycle_loss,
    gan_loss,
    hint_loss,
    soft_dice_loss,
)
from cmedl.losses.contextual import reference_contextual_similarity

pytestmark = pytest.mark.usefixtures("one_thread")


BIG = 50.0  # sigmoid(50) == 1.0 and sigmoid(-50) ~ 2e-22 in float32: hard predictions


def _hard_logits(mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), torch.tensor(BIG), torch.tensor(-BIG))


# --------------------------------------------------------------------------------------------- Dice


def test_dice_perfect_prediction_is_zero() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, 4:9, 3:7] = 1
    target[1, 0, 10:12, 10:15] = 1
    loss = soft_dice_loss(_hard_logits(target), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dice_disjoint_known_answer_and_smoothing() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 0, :] = 1  # 8 pixels
    pred = torch.zeros(1, 1, 8, 8)
    pred[0, 0, 7, :6] = 1  # 6 other pixels
    logits = _hard_logits(pred)
    # 1 - (2*0 + s) / (6 + 8 + s)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 1 / 15, abs=1e-6)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1.0, abs=1e-6)
    # empty target: empty prediction scores 0, k predicted pixels score k / (k + s)
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(_hard_logits(empty), empty).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(logits, empty).item() == pytest.approx(6 / 7, abs=1e-6)


def test_dice_matches_monai_per_sample() -> None:
    from monai.losses import DiceLoss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 12, 10, generator=gen)
    target = (torch.rand(3, 1, 12, 10, generator=gen) > 0.7).float()
    ref = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")(logits, target)
    ours = soft_dice_loss(logits, target, reduction="none")
    torch.testing.assert_close(ours, ref.reshape(-1))


def test_dice_sample_mask_excludes_unlabelled_samples() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, generator=gen, requires_grad=True)
    target = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).float()
    mask = torch.tensor([True, False, True])
    loss = soft_dice_loss(logits, target, sample_mask=mask)
    per = soft_dice_loss(logits, target, reduction="none")
    assert loss.item() == pytest.approx((per[0] + per[2]).item() / 2, rel=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[1] == 0)  # the unlabelled sample gets no gradient
    assert logits.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0
    none = soft_dice_loss(logits, target, sample_mask=mask, reduction="none")
    assert none[1].item() == 0.0 and none[0].item() == pytest.approx(per[0].item())
    total = soft_dice_loss(logits, target, sample_mask=mask, reduction="sum")
    assert total.item() == pytest.approx((per[0] + per[2]).item(), rel=1e-6)


def test_dice_all_masked_is_zero_and_backward_works() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1)
    logits = conv(torch.randn(2, 1, 8, 8))
    loss = SoftDiceLoss()(logits, torch.ones(2, 1, 8, 8), torch.tensor([False, False]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert conv.weight.grad is not None and torch.all(conv.weight.grad == 0)


def test_dice_3d_bf16_and_shape_errors() -> None:
    target = torch.zeros(2, 1, 4, 6, 6)
    target[:, :, 1:3, 2:4, 2:4] = 1
    loss = soft_dice_loss(_hard_logits(target).to(torch.bfloat16), target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        soft_dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="sample_mask"):
        soft_dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), sample_mask=torch.ones(3))


# ---------------------------------------------------------------------------------------------- GAN


def test_gan_lsgan_known_values() -> None:
    pred = torch.tensor([[0.0, 1.0, 2.0]])
    assert gan_loss(pred, True, "lsgan").item() == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert gan_loss(pred, False, "lsgan").item() == pytest.approx(5 / 3)  # (0 + 1 + 4) / 3
    assert GANLoss("lsgan")(torch.full((2, 1, 4, 4), 0.5), True).item() == pytest.approx(0.25)


def test_gan_bce_known_values() -> None:
    zero = torch.zeros(2, 1, 3, 3)
    assert GANLoss("bce")(zero, True).item() == pytest.approx(math.log(2))
    assert GANLoss("bce")(zero, False).item() == pytest.approx(math.log(2))
    two = torch.full((1, 1, 2, 2), 2.0)
    assert gan_loss(two, True, "bce").item() == pytest.approx(math.log1p(math.exp(-2)), rel=1e-6)
    assert gan_loss(two, False, "bce").item() == pytest.approx(math.log1p(math.exp(2)), rel=1e-6)
    assert gan_loss(two.to(torch.bfloat16), True, "bce").dtype == torch.float32


def test_gan_unknown_mode_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'lsgan'"):
        GANLoss("lsgn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bce"):
        gan_loss(torch.zeros(1), True, "wgan")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- cycle


def test_cycle_loss_is_mean_l1() -> None:
    a = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    b = torch.zeros_like(a)
    assert cycle_loss(a, b).item() == pytest.approx(2.5 / 4)
    assert cycle_loss(a, a).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        cycle_loss(a, torch.zeros(1, 1, 2, 3))


# --------------------------------------------------------------------------------------- contextual


def _reference_cx(x: np.ndarray, y: np.ndarray, h: float, eps: float = 1e-5) -> float:
    """Literal float64 transcription of Mechrez et al. for one sample: x [C, N], y [C, M]."""
    mu = y.mean(axis=1, keepdims=True)
    xc, yc = x - mu, y - mu
    xc = xc / np.linalg.norm(xc, axis=0, keepdims=True)
    yc = yc / np.linalg.norm(yc, axis=0, keepdims=True)
    n, m = x.shape[1], y.shape[1]
    d = np.array([[1.0 - xc[:, i] @ yc[:, j] for j in range(m)] for i in range(n)])
    dt = d / (d.min(axis=1, keepdims=True) + eps)
    w = np.exp((1.0 - dt) / h)
    cx = w / w.sum(axis=1, keepdims=True)
    return float(np.mean([max(cx[i, j] for i in range(n)) for j in range(m)]))


def test_contextual_matches_literal_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, generator=gen)  # N = 7 generated positions
    y = torch.randn(2, 5, 4, generator=gen)  # M = 4 target positions (asymmetric on purpose)
    for h in (0.5, 0.1):
        ours = contextual_similarity(x, y, bandwidth=h)
        ref = [_reference_cx(x[b].double().numpy(), y[b].double().numpy(), h) for b in range(2)]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)
        loss = contextual_loss(x, y, bandwidth=h)
        assert loss.item() == pytest.approx(float(np.mean(-np.log(ref))), rel=1e-5)


@pytest.mark.parametrize("h", [0.5, 0.2])
def test_contextual_backward_matches_autograd_and_gradcheck(h: float) -> None:
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)  # different upstream gradient per sample
    (contextual_similarity(x, y, h) * w).sum().backward()
    gx, gy = x.grad.clone(), y.grad.clone()  # type: ignore[union-attr]
    x.grad = y.grad = None
    (reference_contextual_similarity(x, y, h) * w).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gy, y.grad)
    assert torch.autograd.gradcheck(lambda a, b: contextual_similarity(a, b, h), (x, y))
    # float32 path (the one used in training) agrees too
    x32, y32 = x.detach().float().requires_grad_(), y.detach().float()
    contextual_loss(x32, y32, h).backward()
    x64 = x.detach().clone().requires_grad_()
    (-torch.log(reference_contextual_similarity(x64, y.detach(), h))).mean().backward()
    torch.testing.assert_close(x32.grad, x64.grad.float(), rtol=1e-3, atol=1e-6)  # type: ignore[union-attr]


def test_contextual_identity_close_to_one_and_below_unrelated() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 32, 8, 8, generator=gen)
    y = torch.randn(2, 32, 8, 8, generator=gen)
    same = contextual_similarity(x, x)
    assert torch.all(same > 0.999)
    assert contextual_loss(x, x).item() < 1e-3
    unrelated = contextual_loss(x, y).item()
    assert unrelated > 1.0  # random 32-d features: CX ~ 2/M, far from 1
    assert unrelated <= math.log(64) + 1e-5  # CX >= 1/M
    # a noisy copy is in between
    noisy = contextual_loss(x + 2.0 * torch.randn(x.shape, generator=gen), x).item()
    assert contextual_loss(x, x).item() < noisy < unrelated


def test_contextual_invariant_to_position_permutations_and_target_shift() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 6, 6, generator=gen)
    y = torch.randn(2, 16, 5, 5, generator=gen)
    base = contextual_loss(x, y, reduction="none")
    px = torch.randperm(36, generator=gen)
    py = torch.randperm(25, generator=gen)
    torch.testing.assert_close(contextual_loss(x.flatten(2)[:, :, px], y, reduction="none"), base)
    torch.testing.assert_close(contextual_loss(x, y.flatten(2)[:, :, py], reduction="none"), base)
    # centring by the target mean: a common offset of all feature vectors changes nothing
    shift = torch.randn(1, 16, 1, 1, generator=gen) * 3
    torch.testing.assert_close(contextual_loss(x + shift, y + shift, reduction="none"), base)
    # ... and it is per sample: a sample's loss does not depend on the rest of the batch
    torch.testing.assert_close(contextual_loss(x[:1], y[:1], reduction="none"), base[:1])


def test_contextual_gradient_reduces_loss() -> None:
    gen = torch.Generator().manual_seed(6)
    y = torch.randn(1, 8, 5, 5, generator=gen)
    x = torch.randn(1, 8, 5, 5, generator=gen, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    first = contextual_loss(x, y)
    first.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for _ in range(20):
        opt.zero_grad()
        loss = contextual_loss(x, y)
        loss.backward()
        opt.step()
    assert contextual_loss(x, y).item() < 0.25 * first.item()


def test_contextual_sampling_bounded_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 32, 32, generator=gen)  # 1024 positions
    y = torch.randn(2, 8, 24, 24, generator=gen)  # 576 positions
    shapes: list[tuple[int, ...]] = []
    mm = torch.mm

    def spy(a: Tensor, b: Tensor) -> Tensor:
        out = mm(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "mm", spy)
    a = contextual_loss(x, y, max_positions=100, generator=torch.Generator().manual_seed(0))
    assert shapes == [(100, 100), (100, 100)]  # one affinity matrix per sample, max_positions^2
    b = contextual_loss(x, y, max_positions=100, generator=torch.Generator().manual_seed(0))
    c = contextual_loss(x, y, max_positions=100, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item() and a.item() != c.item()
    torch.manual_seed(11)
    d = contextual_loss(x, y, max_positions=100)
    torch.manual_seed(11)
    assert contextual_loss(x, y, max_positions=100).item() == d.item()  # global RNG path
    # at or below the limit the result is exact (no sampling)
    exact = contextual_loss(x, y)
    assert contextual_loss(x, y, max_positions=1024).item() == exact.item()
    assert shapes[-1] == (1024, 576)


def test_contextual_runs_in_float32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 16, 6, 6, generator=gen)
    y = x + 0.01 * torch.randn(x.shape, generator=gen)
    ref = contextual_loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = contextual_loss(x.bfloat16(), y.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), abs=0.05)


class _ToyExtractor(nn.Module):
    """Stand-in for VGG19Features: two conv stages returning {name: map}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1, stride=2)

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        fa = torch.relu(self.a(img))
        return {"conv3_3": fa, "conv4_1": torch.relu(self.b(fa))}


def test_contextual_module_layers_gradients_and_frozen_extractor() -> None:
    ext = _ToyExtractor()
    loss_fn = ContextualLoss(ext, layers=("conv3_3", "conv4_1"), bandwidth=0.5)
    assert not any(p.requires_grad for p in ext.parameters())
    loss_fn.train()
    assert not ext.training
    gen = torch.Generator().manual_seed(9)
    fake = torch.tanh(torch.randn(2, 1, 16, 16, generator=gen)).requires_grad_(True)
    real = torch.tanh(torch.randn(2, 1, 16, 16, generator=gen))
    loss = loss_fn(fake, real)
    with torch.no_grad():
        f, r = ext(fake), ext(real)
        expected = (
            contextual_loss(f["conv3_3"], r["conv3_3"])
            + contextual_loss(f["conv4_1"], r["conv4_1"])
        ) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.parameters())
    assert loss_fn(real, real).item() < 1e-3


def test_contextual_module_config_errors() -> None:
    ext = _ToyExtractor()
    assert DEFAULT_CX_LAYERS == ("conv3_3", "conv3_4", "conv4_1")
    with pytest.raises(ConfigError, match="did you mean 'conv4_1'"):
        ContextualLoss(ext, layers=("conv4_2",))(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="bandwidth"):
        ContextualLoss(ext, bandwidth=0.0)
    with pytest.raises(ConfigError, match="layer"):
        ContextualLoss(ext, layers=())


# --------------------------------------------------------------------------------------------- hint


def _feats(seed: int, *shapes: tuple[int, ...], grad: bool = False) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_(grad) for s in shapes]


def test_hint_zero_and_constant_offset_known_values() -> None:
    shapes = ((2, 4, 8, 8), (2, 8, 4, 4))
    t = _feats(0, *shapes)
    assert hint_loss(t, t).item() == 0.0
    s = [t[0] + 0.5, t[1] - 2.0]
    assert hint_loss(s, t).item() == pytest.approx(0.25 + 4.0, rel=1e-6)  # c^2 per layer, summed


def test_hint_normalised_per_element() -> None:
    small = _feats(1, (1, 4, 8, 8))
    big = _feats(2, (2, 4, 16, 16))  # 8x the elements, same per-element difference
    a = hint_loss([small[0] + 1.5], small)
    b = HintLoss()([big[0] + 1.5], big)
    assert a.item() == pytest.approx(2.25, rel=1e-6) and b.item() == pytest.approx(2.25, rel=1e-6)


def test_hint_detach_teacher_stops_teacher_gradient() -> None:
    for detach in (False, True):
        s = _feats(3, (2, 4, 6, 6), grad=True)
        t = _feats(4, (2, 4, 6, 6), grad=True)
        hint_loss(s, t, detach_teacher=detach).backward()
        # d/ds mean((s - t)^2) = 2 (s - t) / numel
        torch.testing.assert_close(s[0].grad, 2 * (s[0] - t[0]).detach() / s[0].numel())
        if detach:
            assert t[0].grad is None
        else:
            torch.testing.assert_close(t[0].grad, -s[0].grad)


def test_hint_mismatch_errors_list_shapes() -> None:
    s = _feats(5, (2, 4, 8, 8), (2, 8, 4, 4))
    with pytest.raises(ConfigError, match=r"\(2, 8, 4, 4\).*\(2, 8, 2, 2\)"):
        hint_loss(s, _feats(6, (2, 4, 8, 8), (2, 8, 2, 2)))
    with pytest.raises(ConfigError, match="number or shape"):
        hint_loss(s, s[:1])
    with pytest.raises(ConfigError, match="no hint features"):
        hint_loss([], [])


def test_batch_dice_pools_samples_and_penalises_false_positives_on_empty_targets():
    import torch as _t

    from cmedl.losses import soft_dice_loss as _dice

    logits = _t.full((2, 1, 4, 4), -20.0)
    target = _t.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    logits[0, 0, :2, :2] = 20.0  # sample 0 perfect
    logits[1, 0] = 20.0  # sample 1: all 16 pixels false positive on an empty target
    pooled = _dice(logits, target, reduction="batch", smooth=0.0)
    # pooled: 2*4 / (4 + 16 + 4) = 1/3 Dice
    assert abs(float(pooled) - (1 - 8 / 24)) < 1e-4
    # the false positives keep a gradient under batch Dice (per-sample Dice on an empty target saturates)
    x = (logits / 10).clone().requires_grad_(True)  # unsaturated sigmoid
    _dice(x, target, reduction="batch").backward()
    per_sample = (logits / 10).clone().requires_grad_(True)
    _dice(per_sample, target, reduction="mean").backward()
    assert x.grad[1].abs().sum() > 3 * per_sample.grad[1].abs().sum()
    masked = _dice(logits, target, reduction="batch", sample_mask=_t.tensor([True, False]), smooth=0.0)
    assert abs(float(masked)) < 1e-4
    none = _dice(logits, target, reduction="batch", sample_mask=_t.tensor([False, False]))
    assert float(none) == 0.0
