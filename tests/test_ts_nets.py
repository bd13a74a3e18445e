"""The teacher-student paper's 3D U-Nets (nets/ts_unet3d.py): depth, stride-2 downsampling, PReLU,
the dual-output head, any patch size, registry names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets import SEGMENTATION_NETS_3D, build_segmentation_net
from cmedl.nets.predict import inference_copy, predict_volume_3d
from cmedl.nets.ts_unet3d import TSUNet3D

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_variants_and_depths():
    assert {"ts-unet3d", "ts-unet3d-teacher", "ts-unet3d-do"} <= set(SEGMENTATION_NETS_3D)
    student = build_segmentation_net("ts-unet3d", base_width=4)
    teacher = build_segmentation_net("ts-unet3d-teacher", in_channels=2, base_width=4)
    dual = build_segmentation_net("ts-unet3d-do", base_width=4)
    assert (student.levels, student.stride, teacher.levels, teacher.stride) == (4, 16, 3, 8)
    assert teacher.encoders[0][0][0].in_channels == 2
    assert dual.out_channels == 2 and student.out_channels == 1
    # downsampling by stride-2 convolutions (no pooling layers), PReLU activations, no ReLU
    strided = [m for m in student.modules() if isinstance(m, nn.Conv3d) and m.stride == (2, 2, 2)]
    assert len(strided) == 4
    assert not any(isinstance(m, (nn.MaxPool3d, nn.ReLU)) for m in student.modules())
    assert any(isinstance(m, nn.PReLU) for m in student.modules())
    # the dual-output student adds exactly one decoder branch to the single-output one
    n = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n(dual) - n(student) == sum(p.numel() for p in dual.box_decoder.parameters())


def test_dual_output_head_shapes_and_branches():
    torch.manual_seed(0)
    net = build_segmentation_net("ts-unet3d-do", base_width=4).eval()
    x = torch.randn(2, 1, 16, 32, 32)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 2, 16, 32, 32)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 8, 16, 16), (2, 4, 16, 32, 32)]
    # channel 0 is the segmentation decoder alone: identical to a net without the box branch
    single = TSUNet3D(1, 1, 4, 4)
    single.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("box_decoder")})
    with torch.no_grad():
        assert torch.allclose(single.eval()(x), logits[:, :1], atol=1e-5)
    # both heads start at the 5 % prior
    with torch.no_grad():
        p = torch.sigmoid(net.box_decoder.head.bias)
        q = torch.sigmoid(net.decoder.head.bias)
    assert float(p) == pytest.approx(0.05, abs=1e-6) and float(q) == pytest.approx(0.05, abs=1e-6)


def test_any_patch_size_is_padded_and_cropped_back():
    net = build_segmentation_net("ts-unet3d", base_width=4)
    assert net(torch.zeros(1, 1, 20, 36, 18)).shape == (1, 1, 20, 36, 18)
    teacher = build_segmentation_net("ts-unet3d-teacher", in_channels=2, base_width=4)
    assert teacher(torch.zeros(1, 2, 12, 20, 28)).shape == (1, 1, 12, 20, 28)


def test_whole_volume_prediction_reads_the_segmentation_channel():
    torch.manual_seed(0)
    net = build_segmentation_net("ts-unet3d-do", base_width=4)
    with torch.no_grad():
        net.box_decoder.head.bias.fill_(20.0)  # the box channel says "everywhere"
        net.decoder.head.bias.fill_(-20.0)  # the segmentation channel says "nowhere"
    image = torch.randn(20, 40, 36).numpy()
    prob = predict_volume_3d(inference_copy(net, torch.device("cpu")), image, (16, 32, 32))
    assert prob.shape == image.shape and float(prob.max()) < 1e-3


def test_bad_depth_and_width():
    with pytest.raises(ConfigError, match="levels"):
        TSUNet3D(levels=7)
    with pytest.raises(ConfigError, match="base_width"):
        build_segmentation_net("ts-unet3d", base_width=0)
