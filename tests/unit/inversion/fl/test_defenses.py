"""Defenses on the shared update: noise, norm clipping, sparsification (hand-checked)."""

import pytest
import torch

from inversion.fl import SharedUpdate
from inversion.fl.defenses import Defense, apply_defense, defend_update, parse_defense

GRADS = {"a": torch.tensor([3.0, -4.0]), "b": torch.tensor([[0.1, -0.2, 0.3, -0.4, 0.5]])}


def test_parse_specs():
    assert parse_defense("none") == Defense("none", 0.0)
    assert parse_defense("noise:0.01") == Defense("noise", 0.01)
    assert parse_defense(" clip:4 ").spec == "clip:4"
    for bad, message in [
        ("dp:1", "unknown defense"),
        ("noise:x", "needs a number"),
        ("clip:0", "> 0"),
        ("sparsify:100", r"\[0, 100\)"),
        ("noise:-1", ">= 0"),
        ("none:1", "no level"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_defense(bad)


def test_clip_scales_to_the_global_norm():
    total = (25 + 0.01 + 0.04 + 0.09 + 0.16 + 0.25) ** 0.5
    clipped = apply_defense(GRADS, "clip:2")
    norm = torch.sqrt(sum((g**2).sum() for g in clipped.values()))
    assert float(norm) == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(clipped["a"], GRADS["a"] * (2.0 / (total + 1e-6)))
    unchanged = apply_defense(GRADS, "clip:100")  # already within the bound
    torch.testing.assert_close(unchanged["b"], GRADS["b"])


def test_sparsify_zeroes_below_the_percentile_per_tensor():
    out = apply_defense(GRADS, "sparsify:50")
    # |b| = 0.1..0.5: the median is 0.3, so 0.1 and 0.2 go; a: median 3.5 -> 3 goes
    torch.testing.assert_close(out["b"], torch.tensor([[0.0, 0.0, 0.3, -0.4, 0.5]]))
    assert out["a"].tolist() == [0.0, -4.0]
    assert apply_defense(GRADS, "sparsify:0")["b"].count_nonzero() == 5


def test_noise_has_the_asked_std_and_is_seeded():
    big = {"w": torch.zeros(200_000)}
    noisy = apply_defense(big, "noise:0.1", generator=torch.Generator().manual_seed(0))["w"]
    assert float(noisy.std()) == pytest.approx(0.1, rel=0.01) and abs(float(noisy.mean())) < 1e-3
    again = apply_defense(big, "noise:0.1", generator=torch.Generator().manual_seed(0))["w"]
    assert torch.equal(noisy, again)


def test_defended_update_is_recorded_and_the_original_kept():
    update = SharedUpdate.from_gradients(GRADS, batch_size=2, notes={"x": 1})
    defended = defend_update(update, "sparsify:50", seed=3)
    assert defended.meta.notes == {"x": 1, "defense": "sparsify:50", "defense_seed": 3}
    assert torch.equal(update.gradients["a"], GRADS["a"])  # the input is not modified
    assert defended.gradients["a"].tolist() == [0.0, -4.0]
