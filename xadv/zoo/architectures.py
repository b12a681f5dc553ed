"""Reference architectures written out without torchvision: ResNet-18/50, VGG-11-BN and
a Vision Transformer, with torchvision's module names and state-dict keys (so
``model.load_state_dict(torch.load(<torchvision checkpoint>))`` works at the default
widths), plus small widths and input sizes for tests. Random initialisation; nothing
is downloaded.

>>> import torch
>>> from xadv.zoo.architectures import resnet18, vit_tiny
>>> resnet18(num_classes=4, width=8)(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 4])
>>> vit_tiny(image_size=16, patch_size=4, num_classes=3)(torch.rand(2, 3, 16, 16)).shape
torch.Size([2, 3])
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import List, Optional, Sequence, Type, Union

import torch
import torch.fx
from torch import nn


@contextlib.contextmanager
def _seeded(seed: Optional[int]):
    """Draw the initial weights from ``seed`` without touching the global RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- ResNet
def _conv3x3(i: int, o: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (one ``relu`` module called twice, in-place residual)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet-50): 1x1, 3x3 (stride), 1x1 with expansion 4."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet (He et al., 2016) with torchvision's names: ``conv1, bn1, relu, maxpool,
    layer1..layer4, avgpool, fc``. ``width`` is the first stage's channels (64 in
    torchvision); ``small_input=True`` uses a 3x3 stem without max-pooling (CIFAR-sized
    inputs; the state-dict keys stay the same but ``conv1``'s shape differs)."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: Sequence[int], num_classes: int = 1000,
                 width: int = 64, small_input: bool = False):
        super().__init__()
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(block, width, layers[0])
        self.layer2 = self._make(block, width * 2, layers[1], 2)
        self.layer3 = self._make(block, width * 4, layers[2], 2)
        self.layer4 = self._make(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64, small_input: bool = False,
             seed: Optional[int] = 0) -> ResNet:
    """ResNet-18 (torchvision ``resnet18`` keys at ``width=64``), random init (``seed``), eval mode."""
    with _seeded(seed):
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, small_input).eval()


def resnet50(num_classes: int = 1000, width: int = 64, small_input: bool = False,
             seed: Optional[int] = 0) -> ResNet:
    """ResNet-50 (torchvision ``resnet50`` keys at ``width=64``), random init (``seed``), eval mode."""
    with _seeded(seed):
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width, small_input).eval()


# --------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """VGG with torchvision's names: ``features`` (conv/bn/relu/maxpool), ``avgpool``
    (AdaptiveAvgPool2d(7)), ``classifier`` (Linear, ReLU, Dropout, Linear, ReLU,
    Dropout, Linear). ``width`` scales the channels (64 in torchvision), ``hidden`` the
    classifier (4096), ``pool`` the adaptive pooling size (7)."""

    def __init__(self, cfg: Sequence[Union[int, str]], num_classes: int = 1000, width: int = 64,
                 hidden: int = 4096, pool: int = 7, batch_norm: bool = True):
        super().__init__()
        layers: List[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                o = int(v) * width // 64
                layers.append(nn.Conv2d(c, o, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(o))
                layers.append(nn.ReLU(inplace=True))
                c = o
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11_bn(num_classes: int = 1000, width: int = 64, hidden: int = 4096, pool: int = 7,
             seed: Optional[int] = 0) -> VGG:
    """VGG-11 with batch norm (torchvision ``vgg11_bn`` keys at the defaults), random init, eval mode."""
    with _seeded(seed):
        return VGG([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], num_classes, width,
                   hidden, pool).eval()


# --------------------------------------------------------------------------- ViT
class MLPBlock(nn.Sequential):
    """torchvision's MLPBlock: Linear, GELU, Dropout, Linear, Dropout (keys ``0``, ``3``)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                         nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block with torchvision's names (``ln_1``, ``self_attention``,
    ``ln_2``, ``mlp``); output (N, 1 + h*w, D)."""

    def __init__(self, num_heads: int, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, dim, mlp_dim, dropout)) for i in range(num_layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


@torch.fx.wrap
def _image_size_checked(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` when its images are ``size`` x ``size``; a ``ValueError`` otherwise. Kept out
    of the traced forward by ``torch.fx.wrap`` (the check stays a call when a ViT is
    traced, as xadv's explainers do)."""
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"this ViT takes {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}")
    return x


class VisionTransformer(nn.Module):
    """Vision Transformer (Dosovitskiy et al., 2021) with torchvision's names:
    ``conv_proj`` (patch embedding), ``class_token``, ``encoder.pos_embedding``,
    ``encoder.layers.encoder_layer_<i>.{ln_1, self_attention, ln_2, mlp}``,
    ``encoder.ln``, ``heads.head``. Grad-CAM layers: ``encoder.layers.encoder_layer_<i>``
    or their ``ln_1``, outputs (N, 1 + h*w, D)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
                 hidden_dim: int = 768, mlp_dim: int = 3072, num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq, num_layers, num_heads, hidden_dim, mlp_dim, dropout)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(_image_size_checked(x, self.image_size)).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(num_classes: int = 1000, image_size: int = 224, seed: Optional[int] = 0) -> VisionTransformer:
    """ViT-B/16 (torchvision ``vit_b_16`` keys), random init, eval mode."""
    with _seeded(seed):
        return VisionTransformer(image_size, 16, 12, 12, 768, 3072, num_classes).eval()


def vit_tiny(num_classes: int = 1000, image_size: int = 224, patch_size: int = 16, num_layers: int = 12,
             num_heads: int = 3, hidden_dim: int = 192, mlp_dim: int = 768, seed: Optional[int] = 0) -> VisionTransformer:
    """ViT-Tiny (D=192, 3 heads, 12 layers, as DeiT-Ti) in the torchvision layout; smaller
    ``image_size`` / ``num_layers`` / ``hidden_dim`` for tests. Random init, eval mode."""
    with _seeded(seed):
        return VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                                 num_classes).eval()
