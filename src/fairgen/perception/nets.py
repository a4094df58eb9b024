"""MobileNetV3-Large and ResNet-34 in plain torch, with torchvision's module layout.

The published attribute classifiers (Shen et al.'s MobileNetV3-Large heads, FairFace's ResNet-34) are
state dicts saved from torchvision models. torchvision is not a fairgen dependency (its PyPI build is tied
to one torch release), so the two architectures are rebuilt here with the exact same module names,
shapes and layer hyper-parameters (BatchNorm eps / momentum, paddings, activations): a torchvision-saved
file loads with `load_state_dict(..., strict=True)` and computes the same function.

Both take float images [B, 3, H, W] and return logits [B, num_classes]; they are built in eval mode
(inference only: BatchNorm uses its running statistics, dropout is off).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# MobileNetV3 BatchNorm settings (torchvision: eps=0.001, momentum=0.01).
_MobileBN = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class _ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: conv (no bias) -> BatchNorm -> optional activation.
    State-dict keys: `0.weight`, `1.{weight,bias,running_mean,running_var,num_batches_tracked}`."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = None,
        norm: type[nn.Module] | partial = nn.BatchNorm2d,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            norm(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class _SqueezeExcitation(nn.Module):
    """torchvision's SqueezeExcitation with MobileNetV3's hard-sigmoid gate (keys `fc1`, `fc2`)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class _InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project (+ residual).
    Modules live in `self.block` (a Sequential), as in torchvision."""

    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hswish: bool, stride: int
    ) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_ConvBNAct(cin, expanded, 1, act=act, norm=_MobileBN))
        layers.append(
            _ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act, norm=_MobileBN)
        )
        if se:
            layers.append(_SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(_ConvBNAct(expanded, cout, 1, norm=_MobileBN))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


# torchvision's mobilenet_v3_large configuration (width 1.0, no reduced tail, no dilation):
# (input channels, kernel, expanded channels, output channels, squeeze-excitation, hard-swish, stride).
_V3_LARGE = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


class MobileNetV3Large(nn.Module):
    """torchvision.models.mobilenet_v3_large with a `num_classes`-way last layer (`classifier.3`).

    Input [B, 3, H, W] (any H, W >= 32; Shen et al. feed 224x224 in [-1, 1]); output logits [B, num_classes].
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNAct(3, 16, 3, 2, act=nn.Hardswish, norm=_MobileBN)]
        layers += [_InvertedResidual(*cfg) for cfg in _V3_LARGE]
        layers.append(_ConvBNAct(160, 960, 1, act=nn.Hardswish, norm=_MobileBN))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(960, 1280),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2, inplace=True),
            nn.Linear(1280, num_classes),
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); `downsample` (1x1 conv + BN) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet34(nn.Module):
    """torchvision.models.resnet34 with a `num_classes`-way `fc` (FairFace: 18).

    Input [B, 3, H, W] (FairFace: 224x224, ImageNet-normalised); output logits [B, num_classes].
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for cout, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stages.append(
                nn.Sequential(
                    *(
                        _BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                        for i in range(blocks)
                    )
                )
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
