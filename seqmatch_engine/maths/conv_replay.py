"""Convolutions whose results are kept from the forward sweep and replayed when a step is rebuilt.

The "recompute" memory mode runs every student step twice: once without a graph (to get
theta_{n+1}), once with it (to take its vector-Jacobian product). Most of the second run's time
goes to the 3x3 convolutions of the deeper blocks and to their first-order backward, while their
results are small next to the whole graph (the conv output and the input gradient: 2 activation
copies of those blocks, against the unroll's ~4.5 copies of every block). A `ConvReplay`
records them in the first run and hands them back in the second, where `ReplayedConv` builds the
same autograd nodes without computing their values again; the double backward then runs as usual.
Values are bit-identical to recomputing them: the same kernels ran on the same inputs.

All convolutions here are 3x3, stride 1, padding 1, without bias, as in the ConvNet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

_CONV = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, transposed, output padding, groups


def conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_input: bool, need_weight: bool):
    """(dL/dx, dL/dweight) of conv(x, weight) from dL/dz (None where not needed)."""
    dx, dw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, *_CONV, [need_input, need_weight, False])
    return dx, dw


@dataclass
class _Record:
    """One convolution of one chunk: its output and its first-order gradients."""

    output: torch.Tensor | None = None
    input_grad: torch.Tensor | None = None
    weight_grad: torch.Tensor | None = None


@dataclass
class ConvReplay:
    """The deeper convolutions of one chunk of one step, in call order: recorded, then replayed."""

    records: list[_Record] = field(default_factory=list)
    replaying: bool = False
    _next: int = 0

    def conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """conv(x, weight) (B, Ci, H, W) -> (B, Co, H, W), recorded or replayed."""
        if self.replaying:
            record = self.records[self._next]
            self._next += 1
        else:
            record = _Record()
            self.records.append(record)
        return ReplayedConv.apply(x, weight, record, self.replaying)

    def replay(self) -> "ConvReplay":
        """The same records, to be handed back in call order."""
        return ConvReplay(self.records, replaying=True)


class ReplayedConv(torch.autograd.Function):
    """conv(x, weight) that records its output and first-order gradients, or returns recorded ones.

    Its backward with a graph (the rebuilt step's first-order gradient) is `_ReplayedConvGrad`,
    which returns the recorded gradients; any later backward through it (the double backward
    reaching the forward conv) computes from the incoming gradient as a plain conv would.
    """

    @staticmethod
    def forward(ctx, x, weight, record: _Record, replaying: bool):
        ctx.save_for_backward(x, weight)
        ctx.record, ctx.replaying = record, replaying
        if replaying:
            return record.output.detach()
        record.output = F.conv2d(x, weight, None, padding=1)
        return record.output.detach()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        record = ctx.record
        ctx.record = None  # recorded gradients are for the first backward only
        if record is not None and ctx.replaying and torch.is_grad_enabled():
            dx, dw = _ReplayedConvGrad.apply(grad, x, weight, record)
            return dx if need_x else None, dw if need_w else None, None, None
        dx, dw = conv_backward(grad, x, weight, need_x, need_w)
        if record is not None and not ctx.replaying:
            record.input_grad, record.weight_grad = dx, dw
        return dx, dw, None, None


class _ReplayedConvGrad(torch.autograd.Function):
    """(dL/dx, dL/dweight) of a conv from dL/dz, returned from the record; its backward is the
    conv's double backward: with dx = conv_transpose(dz, w) and dw = corr(x, dz),
        g_dz = conv(g_dx, w) + conv(x, g_dw),  g_x = conv_transpose(dz, g_dw),  g_w = corr(g_dx, dz)."""

    @staticmethod
    def forward(ctx, grad, x, weight, record: _Record):
        ctx.save_for_backward(grad, x, weight)
        return record.input_grad.detach(), record.weight_grad.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_dx, g_dw):
        grad, x, weight = ctx.saved_tensors
        g_grad = g_x = g_w = None
        if g_dx is not None:
            g_grad = F.conv2d(g_dx, weight, None, padding=1)
            g_w = conv_backward(grad, g_dx, weight, False, True)[1]
        if g_dw is not None:
            from_dw = F.conv2d(x, g_dw, None, padding=1)
            g_grad = from_dw if g_grad is None else g_grad + from_dw
            g_x = conv_backward(grad, x, g_dw, True, False)[0]
        return g_grad, g_x, g_w, None
