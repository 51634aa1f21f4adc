"""Gradient-matching objectives: how far the dummies' gradient is from the shared one.

Both act on the gradients of the selected parameters concatenated into one vector
(one ``torch.cat`` per step, then single vector operations: no Python work per
parameter beyond collecting the tensors autograd returns). With per-layer weights
:math:`w_l` (default 1):

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
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        missing = [n for n in names if n not in target]
        if missing:
            raise ValueError(f"the shared update has no gradient for {missing[:5]}; match a subset it holds")
        if not names:
            raise ValueError("no parameters to match")
        self.objective = objective
        self.names = list(names)
        weights = [self._weight(n, layer_weights or {}) for n in self.names]
        sizes = [target[n].numel() for n in self.names]
        self.target = torch.cat([target[n].detach().reshape(-1) for n in self.names]).to(device)
        self.weights = None
        if any(w != 1.0 for w in weights):
            self.weights = torch.repeat_interleave(
                torch.tensor(weights, dtype=self.target.dtype), torch.tensor(sizes)
            ).to(device)
        weighted_target = self.target if self.weights is None else self.target * self.weights
        self.target_norm = torch.sqrt((weighted_target * self.target).sum())

    @staticmethod
    def _weight(name: str, layer_weights: Mapping[str, float]) -> float:
        matches = [p for p in layer_weights if name == p or name.startswith(p + ".")]
        if not matches:
            return 1.0
        weight = float(layer_weights[max(matches, key=len)])
        if weight < 0:
            raise ValueError(f"layer weight for {name!r} is negative ({weight})")
        return weight

    def __call__(self, gradients: Sequence[Tensor]) -> Tensor:
        """The loss (scalar) for the dummy gradients of ``names``, in that order."""
        flat = torch.cat([g.reshape(-1) for g in gradients])
        weighted = flat if self.weights is None else flat * self.weights
        if self.objective == "l2":
            diff = flat - self.target
            return ((diff if self.weights is None else diff * self.weights) * diff).sum()
        dot = (weighted * self.target).sum()
        norm = torch.sqrt((weighted * flat).sum())
        return 1.0 - dot / (norm * self.target_norm + 1e-12)
