"""Networks: MTT's ConvNet as a pure function of a flat parameter vector, and evaluation nets.

The unrolled student, the experts and the evaluation all call `convnet_forward`, so the
weights an expert saves are exactly the ones the student starts from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvNetSpec:
    """Shape of a ConvNet: depth x [conv3x3(width) -> instance norm -> ReLU -> avg-pool 2] -> linear."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int
    width: int = 128
    depth: int = 3

    def feature_size(self) -> tuple[int, int]:
        h, w = self.image_size
        for _ in range(self.depth):
            h, w = h // 2, w // 2
        return h, w

    @property
    def feature_dim(self) -> int:
        h, w = self.feature_size()
        return self.width * h * w

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the parameters, in the order of the flat vector."""
        shapes, cin = [], self.channels
        for d in range(self.depth):
            shapes += [(f"conv{d}.weight", (self.width, cin, 3, 3)), (f"conv{d}.bias", (self.width,)),
                       (f"norm{d}.weight", (self.width,)), (f"norm{d}.bias", (self.width,))]
            cin = self.width
        shapes += [("fc.weight", (self.num_classes, self.feature_dim)), ("fc.bias", (self.num_classes,))]
        return shapes

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.param_shapes())


def default_depth(image_size: tuple[int, int]) -> int:
    """MTT's choice: 3 blocks up to 32 px, 4 for 64 px, 5 beyond."""
    side = max(image_size)
    return 3 if side <= 32 else 4 if side <= 64 else 5


def init_convnet_params(spec: ConvNetSpec, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """PyTorch-default initialisation drawn from `generator`: (P,) flat vector.

    Conv/linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm weight 1, bias 0.
    """
    pieces = []
    for name, shape in spec.param_shapes():
        if name.startswith("norm"):
            value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            fan_in = spec.channels * 9 if name.startswith("conv0") else (
                spec.width * 9 if name.startswith("conv") else spec.feature_dim)
            bound = 1.0 / math.sqrt(fan_in)
            value = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        pieces.append(value.reshape(-1))
    return torch.cat(pieces).to(device)


def unflatten(flat: torch.Tensor, spec: ConvNetSpec) -> list[torch.Tensor]:
    """Views of `flat` (P,) with the shapes of `spec.param_shapes()`."""
    views, offset = [], 0
    for _, shape in spec.param_shapes():
        n = math.prod(shape)
        views.append(flat[offset:offset + n].view(shape))
        offset += n
    return views


def convnet_features(flat: torch.Tensor, x: torch.Tensor, spec: ConvNetSpec) -> torch.Tensor:
    """Penultimate features: params (P,), images (B, C, H, W) -> (B, feature_dim)."""
    params = unflatten(flat, spec)
    for d in range(spec.depth):
        w, b, gamma, beta = params[4 * d: 4 * d + 4]
        x = F.conv2d(x, w, b, padding=1)
        x = F.group_norm(x, spec.width, gamma, beta)  # instance norm with affine
        x = F.avg_pool2d(F.relu(x), 2)
    return x.flatten(1)


def convnet_forward(flat: torch.Tensor, x: torch.Tensor, spec: ConvNetSpec) -> torch.Tensor:
    """Logits: params (P,), images (B, C, H, W) -> (B, num_classes)."""
    fc_w, fc_b = unflatten(flat, spec)[-2:]
    return F.linear(convnet_features(flat, x, spec), fc_w, fc_b)


class ConvNet(nn.Module):
    """`convnet_forward` holding its flat parameter vector as one nn.Parameter."""

    def __init__(self, spec: ConvNetSpec, flat: torch.Tensor):
        super().__init__()
        self.spec = spec
        self.flat = nn.Parameter(flat.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convnet_forward(self.flat, x, self.spec)


class _ResizeTo(nn.Module):
    """Bilinear resize of small inputs so nets built for 32 px accept 28 px images."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.side and x.shape[-2] == self.side:
            return x
        return F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)


def _resnet18(channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()  # small images: keep resolution, as in the distillation literature
    return net


def _vgg11(channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import vgg11

    features = vgg11().features
    features[0] = nn.Conv2d(channels, 64, kernel_size=3, padding=1)
    return nn.Sequential(_ResizeTo(32), features, nn.Flatten(), nn.Linear(512, num_classes))


def _alexnet(channels: int, num_classes: int) -> nn.Module:
    """AlexNet layout for 32 px inputs (five convs, three pools, one classifier)."""
    return nn.Sequential(
        _ResizeTo(32),
        nn.Conv2d(channels, 128, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(192 * 4 * 4, num_classes))


def reinitialise(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every conv/linear weight from `generator` (U(+-1/sqrt(fan_in))), norms to 1/0.

    torchvision initialises from the global RNG; this makes evaluation nets reproducible
    per run without reseeding the process.
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                if layer.bias is not None:
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
            elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)) and layer.weight is not None:
                layer.weight.fill_(1.0)
                layer.bias.zero_()
    return module


def build_eval_net(arch: str, spec: ConvNetSpec, generator: torch.Generator, device: torch.device | str) -> nn.Module:
    """A freshly initialised evaluation net of architecture `arch` for data shaped like `spec`."""
    if arch == "convnet":
        return ConvNet(spec, init_convnet_params(spec, generator)).to(device)
    builders = {"resnet18": _resnet18, "vgg11": _vgg11, "alexnet": _alexnet}
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; choose from convnet, {', '.join(builders)}")
    return reinitialise(builders[arch](spec.channels, spec.num_classes), generator).to(device)
