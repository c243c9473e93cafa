"""Tests of otmlib.losses: the measurement component (paper Sec. 3.3) and eq. (7)."""

from __future__ import annotations

import math

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn as nn
from skimage import data, transform

from otmlib import losses
from otmlib.losses import (
    BackboneUnavailable,
    LossWeights,
    PerceptualLoss,
    available_backbones,
    build_feature_net,
    discriminator_loss,
    discriminator_terms,
    naturalness_loss,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return losses.load_efficientnet_lite0_state()


@pytest.fixture(scope="module")
def lite0_loss() -> PerceptualLoss:
    return PerceptualLoss("efficientnet-lite0")


@pytest.fixture(scope="module")
def vgg_loss() -> PerceptualLoss:
    return PerceptualLoss("vgg19", pretrained=False)  # architecture only: tests never download


@pytest.fixture(params=["efficientnet-lite0", "vgg19"])
def ploss(request) -> PerceptualLoss:
    return request.getfixturevalue({"efficientnet-lite0": "lite0_loss", "vgg19": "vgg_loss"}[request.param])


def _images(n: int = 2, c: int = 3, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 255


# ---------------------------------------------------------------- backbones


def test_registry_names_and_unknown_backbone():
    assert available_backbones() == ["vgg19", "efficientnet-lite0"]
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        build_feature_net("resnet50")


def test_vgg19_is_cut_right_after_relu5_4(vgg_loss):
    net = vgg_loss.net  # build_feature_net("vgg19", pretrained=False)
    assert isinstance(net[-1], nn.ReLU)
    assert isinstance(net[-2], nn.Conv2d) and net[-2].out_channels == 512
    assert sum(isinstance(m, nn.Conv2d) for m in net) == 16
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 4  # the 5th pool comes after relu5_4
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 512, 4, 6)  # H/16, W/16


def test_vgg19_pretrained_path_loads_the_cached_state(monkeypatch, vgg_loss):
    """The online path, fed a known state dict instead of torchvision's download."""
    fake = {f"features.{k}": v + 1.0 for k, v in vgg_loss.net.state_dict().items()}
    fake["classifier.6.bias"] = torch.zeros(1000)
    seen = {}

    def cached(url, **kwargs):
        seen.update(kwargs, url=url)
        return fake

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", cached)
    net = build_feature_net("vgg19")
    assert seen["url"].endswith("vgg19-dcbb9e9d.pth") and seen["weights_only"] is True
    torch.testing.assert_close(net[34].weight, fake["features.34.weight"])  # conv5_4
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_vgg19_offline_error_is_clear(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneUnavailable) as err:
        PerceptualLoss("vgg19")
    msg = str(err.value)
    assert calls and calls[0].endswith("vgg19-dcbb9e9d.pth")
    assert "VGG-19 ImageNet weights could not be downloaded" in msg
    assert torch.hub.get_dir() in msg
    assert "--backbone efficientnet-lite0" in msg
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def _chelsea_224(mean: tuple, std: tuple) -> torch.Tensor:
    img = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True, preserve_range=True)
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None] / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_lite0_weights_classify_a_cat(lite0_state):
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(lite0_state)  # strict: the file is the whole classifier
    spec = losses._spec("efficientnet-lite0")
    with torch.no_grad():
        logits = model.eval()(_chelsea_224(spec.mean, spec.std))
    top5 = logits[0].topk(5).indices.tolist()
    assert any(c in IMAGENET_CATS for c in top5), top5
    assert top5[0] in IMAGENET_CATS


def _tf_same_conv(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """TensorFlow's "SAME": output ceil(size / stride), the odd padding pixel at the bottom / right."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(conv.kernel_size), reversed(conv.stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), conv.weight, None, conv.stride, 0, 1, conv.groups)


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-3)


def test_lite0_features_equal_tensorflow_same_padding_written_out(lite0_loss):
    """The package's modules, as otm builds them, against EfficientNet-Lite written out from TensorFlow's
    builder (SAME padding per input size, ReLU6, linear bottleneck, no SE) with the same weights, at an odd
    size where a padding fixed for 224x224 inputs would differ."""
    net = lite0_loss.net
    x = torch.randn(2, 3, 61, 97, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = F.relu6(_bn(_tf_same_conv(x, net._conv_stem), net._bn0))
        for block in net._blocks:
            inp = h
            if block._block_args.expand_ratio != 1:
                h = F.relu6(_bn(F.conv2d(h, block._expand_conv.weight), block._bn0))
            h = F.relu6(_bn(_tf_same_conv(h, block._depthwise_conv), block._bn1))
            h = _bn(F.conv2d(h, block._project_conv.weight), block._bn2)
            if h.shape == inp.shape:
                h = h + inp
        ours = net(x)
    assert len(net._blocks) == 11 and ours.shape == (2, 112, 4, 7)  # stride 16: ceil(61/16), ceil(97/16)
    assert h.abs().mean() > 0.1  # a live layer, not a degenerate one
    torch.testing.assert_close(ours, h, rtol=1e-5, atol=1e-5)


def test_lite0_feature_shape_for_a_64_patch(lite0_loss):
    with torch.no_grad():
        assert lite0_loss.features(_images(1, 1, 64, 64)).shape == (1, 112, 4, 4)


# ---------------------------------------------------------------- perceptual loss, eq. (1)


def test_perceptual_zero_for_identical_positive_for_different(ploss):
    x = _images(seed=2)
    y = x.flip(-1)
    assert ploss(x, x.clone()).item() == 0.0
    assert ploss(y, x).item() > 1e-6


def test_perceptual_is_the_feature_mse(lite0_loss):
    x, y = _images(seed=3), _images(seed=4)
    with torch.no_grad():
        fx = lite0_loss.net((x / 255 - 127 / 255) / (128 / 255))
        fy = lite0_loss.net((y / 255 - 127 / 255) / (128 / 255))
    torch.testing.assert_close(lite0_loss(y, x), ((fy - fx) ** 2).mean())


def test_perceptual_grey_is_repeated_to_rgb(ploss):
    x, y = _images(c=1, seed=5), _images(c=1, seed=6)
    grey = ploss(y, x)
    rgb = ploss(y.repeat(1, 3, 1, 1), x.repeat(1, 3, 1, 1))
    torch.testing.assert_close(grey, rgb)
    with pytest.raises(ValueError, match="1 or 3"):
        ploss(_images(c=2), _images(c=2))


def test_perceptual_gradient_reaches_input_not_backbone(ploss):
    x = _images(seed=7)
    y = _images(seed=8).requires_grad_(True)
    ploss(y, x).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    params = list(ploss.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


def test_backbone_stays_in_eval_when_parent_trains(lite0_loss):
    parent = nn.ModuleDict({"g": nn.Conv2d(1, 1, 3), "lp": lite0_loss})
    parent.train()
    assert parent.g.training and lite0_loss.training
    assert not any(m.training for m in lite0_loss.net.modules())
    bn = next(m for m in lite0_loss.net.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    lite0_loss(_images(seed=9), _images(seed=10))
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)


def test_describe_names_the_backbone(lite0_loss, vgg_loss):
    assert lite0_loss.backbone_name == "efficientnet-lite0"
    assert "efficientnet-lite0" in lite0_loss.describe() and "112" in lite0_loss.describe()
    assert vgg_loss.backbone_name == "vgg19"
    assert "relu5_4" in vgg_loss.describe() and "random init" in vgg_loss.describe()


# ---------------------------------------------------------------- naturalness, eqs. (2), (3)


def test_naturalness_is_minus_log_d():
    logits = torch.tensor([-3.0, -0.5, 0.0, 2.5], dtype=torch.float64)
    expected = -torch.log(torch.sigmoid(logits)).mean()
    torch.testing.assert_close(naturalness_loss(logits), expected)
    assert naturalness_loss(torch.zeros(3)).item() == pytest.approx(np.log(2))


def test_discriminator_loss_is_mean_of_bce_terms():
    real = torch.tensor([[1.5], [-0.2], [0.7]], dtype=torch.float64)
    fake = torch.tensor([[-2.0], [0.3], [1.1]], dtype=torch.float64)
    r_term = -torch.log(torch.sigmoid(real)).mean()
    f_term = -torch.log(1 - torch.sigmoid(fake)).mean()
    r, f = discriminator_terms(real, fake)
    torch.testing.assert_close(r, r_term)
    torch.testing.assert_close(f, f_term)
    torch.testing.assert_close(discriminator_loss(real, fake), 0.5 * (r_term + f_term))


def test_adversarial_losses_finite_at_extreme_logits():
    big = torch.tensor([1000.0, -1000.0], requires_grad=True)
    ln = naturalness_loss(big)
    assert ln.item() == pytest.approx(500.0)  # (0 + 1000) / 2
    ln.backward()
    assert torch.isfinite(big.grad).all()
    ld = discriminator_loss(torch.tensor([1000.0, -1000.0]), torch.tensor([-1000.0, 1000.0]))
    assert ld.item() == pytest.approx(0.5 * (500.0 + 500.0))
    assert naturalness_loss(torch.tensor([1000.0])).item() == 0.0


# ---------------------------------------------------------------- joint loss, eq. (7)


def test_loss_weights_default_to_the_papers_l1():
    assert LossWeights().l1 == 1.0  # the paper's value; l2 and l3 are reconstructed (see LossWeights)


def test_jpeg_loss_is_reexported():
    from otmlib import jpeg

    assert losses.jpeg_loss is jpeg.jpeg_loss


def test_loss_weights_drive_all_three_terms(lite0_loss):
    """End to end: eq. (7) over real eq. (1), (2), (6) values is differentiable w.r.t. y only."""
    from otmlib import jpeg

    x = _images(1, 1, 64, 64, seed=11)
    y = (x + 12).clamp(0, 255).requires_grad_(True)  # a brightness drift: outside JPEG intervals
    q = torch.tensor(jpeg.ijg_table(10), dtype=torch.float32)
    k = jpeg.quantised_indices(x, q)
    lj = losses.jpeg_loss(y, k, q)
    assert lj.item() > 0
    w = LossWeights()  # eq. (7), as otmlib.steps.GanStep sums its terms
    total = w.l1 * lite0_loss(y, x) + w.l2 * naturalness_loss(torch.zeros(1)) + w.l3 * lj
    total.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert y.grad.sum() > 0  # a descent step lowers the drifted y, back towards its intervals
