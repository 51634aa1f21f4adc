r"""The first-layer span constraint: dummies that live in the row space of the first layer's weight gradient.

When a model's first trainable layer is fully connected, :math:`z = W x + b` on the flattened
(normalised) input :math:`x \in \mathbb{R}^D`, the client's gradient of that weight is

.. math:: \frac{\partial L}{\partial W} = \sum_{i=1}^{K} \delta_i\, x_i^\top,
   \qquad \delta_i = \frac{\partial L}{\partial z_i},

so every row of it is a combination of the K private inputs, and (for :math:`\delta` of full
rank, i.e. ``out_features >= K``) the row space of :math:`\partial L / \partial W` *is* the span of
the private inputs, of dimension at most K. A FedAvg weight delta is a sum of such gradients over
the local steps, with the same span; DP-SGD's clipping rescales per-sample terms and keeps it.
The attack then needs only K x r coefficients :math:`c` instead of K x D pixels:

.. math:: x = s\, c\, V^\top, \qquad V \in \mathbb{R}^{D \times r}, \quad s = \sqrt{D / r}

with :math:`V` an orthonormal basis of that row space (the right singular vectors whose singular
values exceed ``rtol`` times the largest, at most K of them; :math:`s` keeps a coefficient step as large
as a pixel step, see :class:`FirstLayerSpan`). The true batch is a point of this
parameterisation (:math:`c^\star = x^\star V / s`), and the search space shrinks from :math:`K D` to
:math:`K r \le K^2` numbers. With DP noise the gradient has full rank; the K leading singular
vectors are then a denoised estimate of the span, not the span.

:func:`first_linear_weight` finds the layer (by tracing one forward pass), :func:`row_space_basis`
computes :math:`V`, and :class:`FirstLayerSpan` maps coefficients to images and back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from inversion.utils.errors import InputError

__all__ = ["SPAN_MODES", "FirstLayerSpan", "first_linear_weight", "row_space_basis", "span_for_update"]

SPAN_MODES = ("auto", "always", "never")
RTOL = 1e-4
"""Singular values below RTOL x the largest count as zero (float32 gradients of K < D inputs)."""


def first_linear_weight(model: nn.Module, image_shape: Sequence[int]) -> tuple[str, nn.Linear] | None:
    """The name of the weight of ``model``'s first trainable layer, and the layer, when it is an ``nn.Linear``
    applied to the flattened input; else None.

    The first layer is found by running one forward pass (in eval mode, without gradients) on a random
    input of shape (2, *image_shape), of the dtype of the model's first parameter and on its device, and taking
    the first module with its own parameters that is called. It counts as applied to the input only when it
    receives exactly the flattened input (no reordering or arithmetic on the way), as after ``nn.Flatten``.
    """
    first = next(model.parameters())
    probe = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0), dtype=first.dtype)
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[nn.Module, Tensor | None]] = []

    def record(module: nn.Module, inputs: tuple) -> None:
        if not calls and any(True for _ in module.parameters(recurse=False)):
            calls.append((module, inputs[0] if inputs else None))

    handles = [m.register_forward_pre_hook(record) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe.to(first.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not calls:
        return None
    module, seen = calls[0]
    if not isinstance(module, nn.Linear) or not isinstance(seen, Tensor) or seen.dim() != 2:
        return None
    if not torch.equal(seen.cpu(), probe.reshape(2, -1)):
        return None
    return f"{names[module]}.weight", module


def row_space_basis(weight_grad: Tensor, max_rank: int, rtol: float = RTOL) -> Tensor:
    r"""An orthonormal basis of the row space of a weight gradient.

    Args:
        weight_grad: (out, D) gradient (or weight delta) of a linear layer.
        max_rank: at most this many directions are kept (the batch size K).
        rtol: directions whose singular value is below ``rtol`` x the largest are dropped.

    Returns:
        (D, r) float32 with orthonormal columns, r <= min(max_rank, out, D), the leading right
        singular vectors.

    Raises:
        ValueError: the gradient is zero or not finite.
    """
    grad = weight_grad.detach().to(torch.float64)
    if not torch.isfinite(grad).all():
        raise InputError("the first layer's gradient is not finite: the span constraint cannot be used")
    _, singular, vh = torch.linalg.svd(grad, full_matrices=False)
    if singular.numel() == 0 or singular[0] == 0:
        raise InputError("the first layer's gradient is zero: it spans nothing; set attack.span=never")
    rank = min(int((singular > rtol * singular[0]).sum()), max_rank)
    return vh[:rank].T.contiguous().to(torch.float32)


class FirstLayerSpan(nn.Module):
    r"""Dummies :math:`x = s\, c V^\top` in the span of the basis :math:`V` (D, r), with :math:`s = \sqrt{D / r}`.

    The scale :math:`s` makes a step of the same size on every coefficient change the dummies' norm as much
    as that step on every pixel would: without it, a signed optimiser that moves each of the K·D pixels by
    the learning rate would move each of the K·r coefficients by it, :math:`\sqrt{D / r}` times slower, and
    the coefficients of real images (of norm about :math:`\sqrt{D}`) would be out of reach of its budget.

    Args:
        basis: (D, r) orthonormal columns (:func:`row_space_basis`).
        image_shape: (C, H, W) with C·H·W = D.
        layer: the name of the weight the basis came from (for the records).
    """

    basis: Tensor  # a buffer: moves with the module, not a parameter

    def __init__(self, basis: Tensor, image_shape: Sequence[int], layer: str = "") -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        if basis.dim() != 2 or basis.shape[0] != torch.Size(self.image_shape).numel():
            raise InputError(f"a basis of shape {tuple(basis.shape)} does not fit images of shape {self.image_shape}")
        self.register_buffer("basis", basis)
        self.scale = math.sqrt(basis.shape[0] / max(basis.shape[1], 1))
        self.layer = layer

    @property
    def rank(self) -> int:
        """r, the number of coefficients per dummy."""
        return self.basis.shape[1]

    def forward(self, coefficients: Tensor) -> Tensor:
        """Images (..., K, C, H, W) of coefficients (..., K, r)."""
        return (self.scale * coefficients @ self.basis.T).reshape(*coefficients.shape[:-1], *self.image_shape)

    def coefficients(self, images: Tensor) -> Tensor:
        """Coefficients (..., K, r) of the orthogonal projection of images (..., K, C, H, W) onto the span."""
        flat = images.reshape(*images.shape[: images.dim() - len(self.image_shape)], -1)
        return flat @ self.basis / self.scale

    def residual(self, images: Tensor) -> Tensor:
        """Per-image relative distance to the span, ||x - P x|| / ||x||, shape (..., K)."""
        flat = images.reshape(*images.shape[: images.dim() - len(self.image_shape)], -1)
        rest = flat - (flat @ self.basis) @ self.basis.T
        return rest.norm(dim=-1) / flat.norm(dim=-1).clamp_min(1e-12)

    def record(self) -> dict[str, object]:
        """What the results files say about the constraint."""
        return {"layer": self.layer, "rank": self.rank, "dimension": self.basis.shape[0]}


def span_for_update(
    mode: str, model: nn.Module, gradients: Mapping[str, Tensor], batch_size: int, image_shape: Sequence[int]
) -> FirstLayerSpan | None:
    """The span constraint that ``attack.span=mode`` asks for on this model and update, or None.

    ``auto`` uses it where it applies: the first trainable layer is linear on the flattened input, the
    update holds its weight gradient, and it has at least K outputs (fewer outputs cannot span K
    images). ``always`` raises a ValueError that says why where it does not apply; ``never`` never uses it.
    """
    if mode not in SPAN_MODES:
        raise InputError(f"unknown span mode {mode!r}; choose one of {', '.join(SPAN_MODES)}")
    if mode == "never":
        return None
    found = first_linear_weight(model, image_shape)
    if found is None:
        why = "the model's first trainable layer is not a linear layer on the flattened input"
    elif found[0] not in gradients:
        why = f"the update holds no gradient of the first layer's weight {found[0]!r}"
    elif found[1].out_features < batch_size:
        why = (
            f"the first layer has {found[1].out_features} outputs, fewer than the batch size {batch_size}, so "
            "its gradient cannot span the batch"
        )
    else:
        name = found[0]
        return FirstLayerSpan(row_space_basis(gradients[name], batch_size), image_shape, layer=name)
    if mode == "always":
        raise InputError(f"attack.span=always: {why}; set attack.span=auto or never")
    return None
