"""Gradient-matching objectives: how far the dummies' gradient is from the shared one.

Both reduce each parameter's gradient with one dot product (no concatenated copy of
the whole gradient per step, which costs more than it saves) and combine the per-layer
results as one weighted vector sum. With per-layer weights :math:`w_l` (default 1):

- ``cosine`` (Inverting Gradients, Geiping et al. 2020):
  :math:`1 - \\frac{\\sum_l w_l \\langle g_l, t_l \\rangle}
  {\\sqrt{\\sum_l w_l \\|g_l\\|^2}\\,\\sqrt{\\sum_l w_l \\|t_l\\|^2}}`
- ``l2`` (DLG, Zhu et al. 2019): :math:`\\sum_l w_l \\|g_l - t_l\\|^2`

where :math:`g_l` is the dummy gradient of layer :math:`l` and :math:`t_l` the shared one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from inversion.utils.errors import InputError

__all__ = ["OBJECTIVES", "GradientMatcher"]

OBJECTIVES = ("cosine", "l2")


class GradientMatcher:
    """The matching loss against a fixed target gradient.

    Args:
        target: parameter name -> shared gradient.
        names: the parameters to match, in the order the dummy gradients will come.
        objective: ``"cosine"`` or ``"l2"``.
        layer_weights: optional name-prefix -> weight (e.g. ``{"features.0": 2.0, "fc": 0.5}``);
            a parameter takes the weight of the longest listed prefix of its dotted
            name (1 if none).
        device: where the target lives during the attack.
    """

    def __init__(
        self,
        target: Mapping[str, Tensor],
        names: Sequence[str],
        objective: str = "cosine",
        layer_weights: Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if objective not in OBJECTIVES:
            raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        missing = [n for n in names if n not in target]
        if missing:
            raise InputError(f"the shared update has no gradient for {missing[:5]}; match a subset it holds")
        if not names:
            raise InputError("no parameters to match")
        self.objective = objective
        self.names = list(names)
        self.targets = [target[n].detach().reshape(-1).to(device) for n in self.names]
        self.weights = torch.tensor(
            [self._weight(n, layer_weights or {}) for n in self.names], dtype=self.targets[0].dtype, device=device
        )
        target_sq = torch.stack([torch.dot(t, t) for t in self.targets])
        self.target_norm = torch.sqrt((self.weights * target_sq).sum())

    @staticmethod
    def _weight(name: str, layer_weights: Mapping[str, float]) -> float:
        matches = [p for p in layer_weights if name == p or name.startswith(p + ".")]
        if not matches:
            return 1.0
        weight = float(layer_weights[max(matches, key=len)])
        if weight < 0:
            raise InputError(f"layer weight for {name!r} is negative ({weight})")
        return weight

    def __call__(self, gradients: Sequence[Tensor]) -> Tensor:
        """The loss (scalar) for the dummy gradients of ``names``, in that order."""
        flat = [g.reshape(-1) for g in gradients]
        if self.objective == "l2":
            diffs = torch._foreach_sub(flat, self.targets)
            return (self.weights * torch.stack([torch.dot(d, d) for d in diffs])).sum()
        dot = (self.weights * torch.stack([torch.dot(g, t) for g, t in zip(flat, self.targets)])).sum()
        norm = torch.sqrt((self.weights * torch.stack([torch.dot(g, g) for g in flat])).sum())
        return 1.0 - dot / (norm * self.target_norm + 1e-12)

    def batched(self, gradients: Sequence[Tensor]) -> Tensor:
        """The losses (R,) of R stacked dummy gradients, each (R, *shape), in ``names`` order."""
        flat = [g.reshape(g.shape[0], -1) for g in gradients]
        weights = self.weights[:, None]
        if self.objective == "l2":
            return (weights * torch.stack([((g - t) ** 2).sum(dim=1) for g, t in zip(flat, self.targets)])).sum(0)
        dot = (weights * torch.stack([g @ t for g, t in zip(flat, self.targets)])).sum(0)
        norm = torch.sqrt((weights * torch.stack([(g * g).sum(dim=1) for g in flat])).sum(0))
        return 1.0 - dot / (norm * self.target_norm + 1e-12)
