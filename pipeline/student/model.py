"""Student segmentation networks, built by name from a `ModelRecipe` (a registry, not an if-ladder).

`small` is our own encoder-decoder sized for CPUs: four stride-2 stages (1/2 .. 1/16), a global
context branch (the image-pooling branch of DeepLab's ASPP: stuff classes depend on the whole
scene), and a decoder that fuses 1/16 context with 1/4 detail before upsampling, so thin things
keep their outline. `deeplabv3_resnet50` is torchvision's network, randomly initialised (no
pretrained weights reach our machines), for GPUs.

Every network maps normalised images (B, 3, H, W) to logits (B, C, H, W) at the input size.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.student.config import ModelRecipe

# Input normalisation of every student (ImageNet statistics; images come in as 0..1).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallSegNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 3 * width, 4 * width
        self.stage1 = nn.Sequential(conv_bn(3, w1, 2), conv_bn(w1, w1))  # 1/2
        self.stage2 = nn.Sequential(conv_bn(w1, w2, 2), conv_bn(w2, w2))  # 1/4
        self.stage3 = nn.Sequential(conv_bn(w2, w3, 2), conv_bn(w3, w3))  # 1/8
        self.stage4 = nn.Sequential(conv_bn(w3, w4, 2), conv_bn(w4, w4, dilation=2))  # 1/16
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w4, w4, 1), nn.ReLU(inplace=True))
        self.fuse16 = conv_bn(2 * w4, w4)
        self.skip4 = nn.Sequential(nn.Conv2d(w2, w1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.decode = nn.Sequential(conv_bn(w4 + w1, w2), conv_bn(w2, w2))
        self.classifier = nn.Conv2d(w2, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        f2 = self.stage2(self.stage1(x))  # (B, w2, H/4, W/4)
        f16 = self.stage4(self.stage3(f2))  # (B, w4, H/16, W/16)
        ctx = self.context(f16).expand_as(f16)
        f16 = self.fuse16(torch.cat([f16, ctx], 1))
        up = F.interpolate(f16, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        out = self.classifier(self.decode(torch.cat([up, self.skip4(f2)], 1)))  # (B, C, H/4, W/4)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class TorchvisionDeepLab(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]


BUILDERS: dict[str, Callable[[ModelRecipe, int], nn.Module]] = {
    "small": lambda recipe, n: SmallSegNet(n, recipe.width),
    "deeplabv3_resnet50": lambda recipe, n: TorchvisionDeepLab(n),
}

# Smallest input side each network accepts (its output stride: one cell of the coarsest map).
MIN_SIDE = {"small": 16, "deeplabv3_resnet50": 8}


def build_student(recipe: ModelRecipe, num_classes: int) -> nn.Module:
    return BUILDERS[recipe.arch](recipe, num_classes)


def normalize(images: Tensor) -> Tensor:
    """(B, 3, H, W) float in 0..1 -> normalised with MEAN/STD."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
