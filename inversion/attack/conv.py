"""A 2-D convolution whose second-order backward skips a term the attack never uses.

The attack differentiates the gradient of the dummies' loss with respect to the model's
parameters once more, with respect to the dummies (a double backward). In PyTorch the backward of
a convolution computes the input gradient gI and the weight gradient gW in one node, and the
derivative of that node (``aten::_convolution_double_backward``) computes, whenever gI is used
further, the gradient of the weight through it: one more convolution over the batch, with two
transposed copies, even when nobody asks for the weight's gradient (its output mask is not
consulted for that term). The attack never asks for it: it moves the dummies, not the model.

:func:`conv2d` gives the same values and gradients of every order (to rounding) from smaller
pieces: gI is a transposed convolution and gW a weight-gradient convolution, each a node of its
own whose derivatives PyTorch computes only where they are used, and each input's gradient is
computed only when the autograd engine will use it. Per convolution and attack step that saves
the weight-sized term of the double backward (measured on the CPU with ``scripts/bench_attack_speed.py``:
ConvNet-64 steps 24 % and ResNet-18 steps 15 % faster). The attack converts the convolutions of its
private copy of the model (:func:`use_lean_convolutions`); its results do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

__all__ = ["MIN_MULTIPLY_ADDS", "LeanConv2d", "conv2d", "multiply_adds", "use_lean_convolutions"]

_Pair = tuple[int, int]


def _used(ctx: Any, index: int) -> bool:
    """Whether the engine will use the gradient of the Function's input ``index`` in this backward."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    return node is None or torch._C._will_engine_execute_node(node)


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` with numeric stride, padding and dilation, differentiated by separate nodes."""

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, stride: _Pair, padding: _Pair, dilation: _Pair, groups: int
    ) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, _bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        # the rows/columns of x that the strided convolution does not reach: the transposed one must restore them
        ctx.output_padding = tuple(
            x.shape[2 + d]
            - ((output.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1)
            for d in range(2)
        )

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_x = grad_weight = grad_bias = None
        if _used(ctx, 0):
            grad_x = F.conv_transpose2d(
                grad_output, weight, None, stride, padding, ctx.output_padding, groups, dilation
            )
        if _used(ctx, 1):
            grad_weight = conv2d_weight(x, weight.shape, grad_output, stride, padding, dilation, groups)
        if _used(ctx, 2):
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _through_view(tensor: Tensor | None) -> Tensor | None:
    """A leaf that requires grad as a view of itself, so that the engine can tell whether its gradient is used
    (it cannot for a leaf during ``torch.autograd.grad``); anything else unchanged."""
    if tensor is not None and tensor.requires_grad and tensor.grad_fn is None:
        return tensor.view_as(tensor)
    return tensor


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` (zero padding given as numbers) with a cheaper double backward.

    Args:
        x: the input, (B, C_in, H, W).
        weight: (C_out, C_in / groups, kH, kW); bias: (C_out,) or None.
        stride, padding, dilation: pairs of ints; groups: as ``F.conv2d``.

    Returns:
        (B, C_out, H_out, W_out), the value of ``F.conv2d``.
    """
    return _Conv2d.apply(
        _through_view(x),
        _through_view(weight),
        _through_view(bias),
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
    )


MIN_MULTIPLY_ADDS = 2**24
"""Convolutions with fewer multiply-adds per forward keep PyTorch's own: for them the term saved costs less
than the Python around the split (about 0.15 ms per convolution and step here)."""


def multiply_adds(x: Tensor, layer: nn.Conv2d) -> int:
    """Multiply-adds of ``layer``'s forward on ``x`` (B, C_in, H, W):
    B * C_out * C_in / groups * kH * kW * H_out * W_out. ValueError for padding given as a string (``"same"``)."""
    padding = layer.padding
    if isinstance(padding, str):
        raise ValueError(f"multiply_adds needs a convolution with numeric padding, not padding={padding!r}")
    out = [
        (x.shape[2 + d] + 2 * padding[d] - layer.dilation[d] * (layer.kernel_size[d] - 1) - 1) // layer.stride[d] + 1
        for d in range(2)
    ]
    return x.shape[0] * layer.weight[0].numel() * layer.out_channels * out[0] * out[1]


class LeanConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (zero padding, numeric ``padding``) computed by :func:`conv2d` when it has at least
    :data:`MIN_MULTIPLY_ADDS` multiply-adds, else by ``F.conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding  # numeric: use_lean_convolutions turns no other
        if isinstance(padding, str) or multiply_adds(x, self) < MIN_MULTIPLY_ADDS:
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def use_lean_convolutions(model: nn.Module) -> int:
    """Turn, in place, every plain ``nn.Conv2d`` of ``model`` with zero padding given as numbers into a
    :class:`LeanConv2d` (same parameters, values and gradients); returns how many were turned.

    Subclasses of ``nn.Conv2d`` (they may compute otherwise), other padding modes and ``"same"`` /
    ``"valid"`` padding stay as they are; so does everything with a torch that cannot say which gradients
    its engine will use (``torch._C._will_engine_execute_node``, private, present since torch 2.0).
    """
    if not hasattr(torch._C, "_will_engine_execute_node"):
        return 0
    turned = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            module.__class__ = LeanConv2d
            turned += 1
    return turned
