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

from seqmatch_engine.maths import native


@dataclass(frozen=True)
class ConvNetSpec:
    """Shape of a ConvNet: depth x [conv3x3(width) -> instance norm -> ReLU -> avg-pool 2] -> linear."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int
    width: int = 128
    depth: int = 3

    def padding(self, block: int) -> int:
        """Zero padding of block `block`'s conv: 3 for the first conv of 1-channel input, as MTT's ConvNet
        (28x28 MNIST-family images become 32x32 maps and 4x4 features), else 1 ('same')."""
        return 3 if block == 0 and self.channels == 1 else 1

    def map_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of each block's conv output, then of the pooled features: depth + 1 sizes."""
        sizes, (h, w) = [], self.image_size
        for d in range(self.depth):
            grow = 2 * self.padding(d) - 2  # a 3x3 conv adds 2 * padding - 2 rows and columns
            h, w = h + grow, w + grow
            sizes.append((h, w))
            h, w = h // 2, w // 2
        return [*sizes, (h, w)]

    def feature_size(self) -> tuple[int, int]:
        return self.map_sizes()[-1]

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
        x = F.conv2d(x, w, b, padding=spec.padding(d))
        x = F.group_norm(x, spec.width, gamma, beta)  # instance norm with affine
        x = F.avg_pool2d(F.relu(x), 2)
    return x.flatten(1)


def convnet_forward(flat: torch.Tensor, x: torch.Tensor, spec: ConvNetSpec) -> torch.Tensor:
    """Logits: params (P,), images (B, C, H, W) -> (B, num_classes)."""
    fc_w, fc_b = unflatten(flat, spec)[-2:]
    return F.linear(convnet_features(flat, x, spec), fc_w, fc_b)


# -- fast kernels for the unrolled student ------------------------------------------------------------
#
# The student differentiates *through* its own gradient (create_graph), so every op of the
# ConvNet is differentiated twice. Autograd's generic double backward of group_norm, relu and
# avg_pool2d is a long chain of small broadcasting ops over full activations; the Functions below
# give the same maths (tested against autograd with gradcheck/gradgradcheck) in fewer passes, and
# the norm block's three stages run as fused C kernels (native/) on CPU float32 where a C
# compiler is available (tested against the torch ops here). Two exact simplifications:
# - a conv bias followed by instance norm cancels (the norm subtracts the per-channel mean), so
#   its gradient is exactly zero: the fast path leaves conv biases out of the forward and never
#   changes them (autograd would move them by rounding noise only);
# - the first conv (1-3 input channels, where oneDNN is slow) runs as im2col + matmul.

NORM_EPS = 1e-5  # F.group_norm's default, as in convnet_forward


def pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling with floor (= F.avg_pool2d(x, 2)) as two strided adds (faster on CPU)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    rows = x[:, :, 0:2 * h:2] + x[:, :, 1:2 * h:2]
    return (rows[..., 0:2 * w:2] + rows[..., 1:2 * w:2]).mul_(0.25)


def _spread(grad: torch.Tensor, size: int) -> torch.Tensor:
    """(w, size) matrix, w = grad's last dim, in grad's dtype and device: copies column j, times 1/4, to
    columns 2j and 2j+1 (a dropped odd last column stays zero). Exact: one product by 0.25 plus zeros."""
    cols = torch.arange(grad.shape[-1], device=grad.device)
    spread = grad.new_zeros(grad.shape[-1], size)
    spread[cols, 2 * cols] = spread[cols, 2 * cols + 1] = 0.25
    return spread


def unpool2(grad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adjoint of `pool2`: each value / 4 copied to its 2x2 block, zeros in a dropped odd row/column.

    Columns are spread by a matmul and rows by a row copy: both move contiguous memory, where an
    element-wise broadcast copy is 1.8x slower on the CPU (measured at 50x32x14x14).
    """
    b, c, h, w = grad.shape
    rows = grad.reshape(-1, w) @ _spread(grad, size[1])
    up = rows.view(b, c, h, 1, size[1]).expand(b, c, h, 2, size[1]).reshape(b, c, 2 * h, size[1])
    if 2 * h != size[0]:
        up = F.pad(up, (0, 0, 0, size[0] - 2 * h))
    return up


class NormReLUPool(torch.autograd.Function):
    """avg_pool2(relu(instance_norm(z) * gamma + beta)), once- and twice-differentiable.

    Saves z, the per-(sample, channel) mean and 1/std, and the ReLU output (its sign is the mask).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        if native.usable(z, gamma, beta):
            out, mean, rstd, relu = native.forward(z, gamma, beta, NORM_EPS)
        else:
            b, c, h, w = z.shape
            pre, mean, rstd = torch.native_group_norm(z, gamma, beta, b, c, h * w, c, NORM_EPS)
            relu = pre.relu_()
            out = pool2(relu)
        ctx.save_for_backward(z, gamma, mean, rstd, relu)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:
            return None, None, None
        return _NormReLUPoolGrad.apply(grad, *ctx.saved_tensors)


def _relu_pool_grad(grad: torch.Tensor, relu: torch.Tensor) -> torch.Tensor:
    """Gradient at the norm output from the gradient at the pooled output."""
    return torch.ops.aten.threshold_backward(unpool2(grad, relu.shape[-2:]), relu, 0.0)


class _NormReLUPoolGrad(torch.autograd.Function):
    """(dz, dgamma, dbeta) of NormReLUPool; its own backward is the hand-derived double backward.

    With zh = (z - mean) * r, g = dpre (gradient at the norm output), S = H*W and means over H, W:
        dz = gamma r (g - mean(g) - zh mean(g zh)),  dgamma = sum_bhw g zh,  dbeta = sum_bhw g.
    """

    @staticmethod
    def forward(ctx, grad, z, gamma, mean, rstd, relu):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, z, gamma, mean, rstd, relu)
        if native.usable(grad, z, gamma):
            return native.backward(grad, z, gamma, mean, rstd, relu)
        b, c, h, w = z.shape
        dpre = _relu_pool_grad(grad, relu)
        return torch.ops.aten.native_group_norm_backward(dpre, z, mean, rstd, gamma, b, c, h * w, c, [True] * 3)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gdz, gdgamma, gdbeta):
        if gdz is None and gdgamma is None and gdbeta is None:
            return None, None, None, None, None, None
        grad, z, gamma, mean, rstd, relu = ctx.saved_tensors
        if native.usable(grad, z, *(t for t in (gdz, gdgamma, gdbeta) if t is not None)):
            g_grad, g_z, g_gamma = native.double_backward(grad, z, gamma, mean, rstd, relu, gdz, gdgamma, gdbeta)
            return g_grad, g_z, g_gamma, None, None, None
        b, c, h, w = z.shape
        area = h * w
        dpre = _relu_pool_grad(grad, relu)
        r = rstd.view(b, c, 1, 1)
        zh = (z - mean.view(b, c, 1, 1)).mul_(r)
        gr = gamma.view(1, c, 1, 1) * r
        m1 = dpre.mean((2, 3), keepdim=True)
        m2 = (dpre * zh).mean((2, 3), keepdim=True)
        zero = z.new_zeros(1, c, 1, 1)
        gg = zero if gdgamma is None else gdgamma.view(1, c, 1, 1)
        gb = zero if gdbeta is None else gdbeta.view(1, c, 1, 1)
        if gdz is None:
            mg = mgz = mgd = z.new_zeros(b, c, 1, 1)
        else:
            gdz = gdz.contiguous()
            mg = gdz.mean((2, 3), keepdim=True)
            mgz = (gdz * zh).mean((2, 3), keepdim=True)
            mgd = (gdz * dpre).mean((2, 3), keepdim=True)
        # through dpre (linear in the incoming pooled gradient)
        g_dpre = zh * (gg - gr * mgz)
        g_dpre += gb - gr * mg
        if gdz is not None:
            g_dpre.addcmul_(gdz, gr)
        g_grad = pool2(torch.ops.aten.threshold_backward(g_dpre, relu, 0.0))
        # through zh and r (both functions of z): q = dL/dzh, rho = dL/dr
        qa, qb = -gr * m2, gg - gr * mgz           # q = qa * gdz + qb * dpre
        t = area * (mgd - m1 * mg - m2 * mgz)      # sum_hw gdz (dpre - m1 - zh m2)
        rho = gamma.view(1, c, 1, 1) * t
        mean_q, mean_qz = qa * mg + qb * m1, qa * mgz + qb * m2
        g_z = zh.mul_(-r * mean_qz - rho * r * r / area).sub_(r * mean_q)
        g_z.addcmul_(dpre, r * qb)
        if gdz is not None:
            g_z.addcmul_(gdz, r * qa)
        g_gamma = (r * t).sum(0).view(c)
        return g_grad, g_z, g_gamma, None, None, None


def _bmm_weight(weight2d: torch.Tensor, batch: int) -> torch.Tensor:
    """(Co, K) -> (batch, Co, K) view for bmm (torch.matmul would fold 2D @ 3D through transposed copies)."""
    return weight2d.unsqueeze(0).expand(batch, *weight2d.shape)


def _fold(cols: torch.Tensor, size, padding: int) -> torch.Tensor:
    return F.fold(cols, tuple(size), 3, padding=padding)


class Im2colConv(torch.autograd.Function):
    """3x3 convolution (zero padding `padding`) without bias as im2col + batched matmul (for few input channels).

    `graph_input_grad=False` declares that a differentiable (create_graph) backward never needs the
    input gradient, as inside the unroll where the input is the augmented image batch: the weight
    gradient is then built alone. A plain backward always returns both.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, graph_input_grad: bool = True,
                padding: int = 1) -> torch.Tensor:
        b, _, h, w = x.shape
        co = weight.shape[0]
        cols = F.unfold(x, 3, padding=padding)
        ctx.save_for_backward(x, weight, cols)
        ctx.graph_input_grad, ctx.padding = graph_input_grad, padding
        grow = 2 * padding - 2
        return torch.bmm(_bmm_weight(weight.reshape(co, -1), b), cols).view(b, co, h + grow, w + grow)

    @staticmethod
    def backward(ctx, grad):
        x, weight, cols = ctx.saved_tensors
        b, co = grad.shape[:2]
        if torch.is_grad_enabled():
            dx = None
            if ctx.needs_input_grad[0] and ctx.graph_input_grad:
                flat = grad.reshape(b, co, -1)
                dx = _fold(torch.bmm(_bmm_weight(weight.reshape(co, -1).t(), b), flat), x.shape[-2:], ctx.padding)
            return dx, _Im2colWeightGrad.apply(grad, x, cols, weight.shape, ctx.padding), None, None
        flat = grad.reshape(b, co, -1)
        dweight = torch.bmm(flat, cols.transpose(1, 2)).sum(0).view(weight.shape)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _fold(torch.bmm(_bmm_weight(weight.reshape(co, -1).t(), b), flat), x.shape[-2:], ctx.padding)
        return dx, dweight, None, None


class _Im2colWeightGrad(torch.autograd.Function):
    """dW = sum_b grad_b cols_b^T, bilinear in the output gradient and the input (through cols)."""

    @staticmethod
    def forward(ctx, grad, x, cols, shape, padding):
        b, co = grad.shape[:2]
        flat = grad.reshape(b, co, -1)
        ctx.save_for_backward(flat, cols)
        ctx.size, ctx.out_size, ctx.padding = x.shape[-2:], grad.shape[-2:], padding
        return torch.bmm(flat, cols.transpose(1, 2)).sum(0).view(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gweight):
        flat, cols = ctx.saved_tensors
        b, co, _ = flat.shape
        g2 = gweight.reshape(co, -1)
        g_grad = torch.bmm(_bmm_weight(g2, b), cols).view(b, co, *ctx.out_size)
        g_x = _fold(torch.bmm(_bmm_weight(g2.t(), b), flat), ctx.size, ctx.padding) if ctx.needs_input_grad[1] else None
        return g_grad, g_x, None, None, None


IM2COL_MAX_CHANNELS = 4  # first convs with at most this many input channels run as im2col


def is_conv_bias(name: str) -> bool:
    return name.startswith("conv") and name.endswith(".bias")


def fast_convnet_forward(pieces: list[torch.Tensor], x: torch.Tensor, spec: ConvNetSpec,
                         graph_input_grad: bool = True, convs=None) -> torch.Tensor:
    """`convnet_forward` from per-parameter tensors (order of spec.param_shapes()), fast kernels.

    Equal to convnet_forward up to rounding; conv biases are not used (instance norm cancels them).
    `convs` (a conv_replay.ConvReplay) records or replays the convolutions after the first.
    """
    h = x
    for d in range(spec.depth):
        w, _, gamma, beta = pieces[4 * d: 4 * d + 4]
        if d == 0 and w.shape[1] <= IM2COL_MAX_CHANNELS:
            z = Im2colConv.apply(h, w, graph_input_grad, spec.padding(d))
        elif d > 0 and convs is not None:
            z = convs.conv(h, w)
        else:
            z = F.conv2d(h, w, None, padding=spec.padding(d))
        h = NormReLUPool.apply(z, gamma, beta)
    return F.linear(h.flatten(1), pieces[-2], pieces[-1])


class ConvNet(nn.Module):
    """`convnet_forward` holding its flat parameter vector as one nn.Parameter.

    Runs the fused kernels (`fast_convnet_forward`): the same function up to rounding, 1.3x faster
    to train on the CPU; the conv biases get a zero gradient, as they would exactly in theory.
    """

    def __init__(self, spec: ConvNetSpec, flat: torch.Tensor):
        super().__init__()
        self.spec = spec
        self.flat = nn.Parameter(flat.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_convnet_forward(unflatten(self.flat, self.spec), x, self.spec)


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
    from torchvision.models import resnet18  # deferred: torchvision.models takes ~1 s to import, for two baselines

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()  # small images: keep resolution, as in the distillation literature
    return net


def _vgg11(channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import vgg11  # deferred: torchvision.models takes ~1 s to import, for two baselines

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
