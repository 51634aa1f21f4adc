"""The attack registry: attacks by name, the gradient-matching one built in."""

import pytest
import torch

from inversion.attack import (
    AttackSettings,
    Inversion,
    attack_names,
    get_attack,
    plan_labels,
    register_attack,
    unregister_attack,
)
from inversion.fl import client_update
from inversion.models import build_model


def test_gradient_matching_is_registered_and_builds_with_the_pipelines_arguments():
    assert attack_names()[0] == "gradient_matching" and get_attack("gradient_matching") is Inversion
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=0)
    images, labels = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 3])
    update = client_update(model, images, labels, mean=(0.0,), std=(1.0,))
    plan = plan_labels("oracle", update, model, true_labels=labels)
    settings = AttackSettings(max_steps=3)
    built = get_attack("gradient_matching")(model, update, plan, settings, priors={"tv": 0.1}, device="cpu")
    direct = Inversion(model, update, plan, settings, priors={"tv": 0.1}, device="cpu")
    assert built.shape == (3, 1, 6, 6)
    assert torch.equal(built.run(progress=False).images, direct.run(progress=False).images)


def test_an_unknown_attack_is_refused_in_one_line_naming_the_choices():
    with pytest.raises(
        ValueError, match=r"^unknown attack 'analytic'; the attacks are \['gradient_matching'"
    ) as raised:
        get_attack("analytic")
    assert len(str(raised.value).splitlines()) == 1


def test_a_registered_attack_is_returned_replaced_only_when_asked_and_removed():
    def analytic(model, update, plan, settings, **options):
        return ("analytic", model)

    def other(model, update, plan, settings, **options):
        return ("other", model)

    register_attack("analytic", analytic)
    try:
        assert attack_names()[-1] == "analytic" and get_attack("analytic") is analytic
        assert get_attack("analytic")("model", None, None, None, device="cpu") == ("analytic", "model")
        with pytest.raises(ValueError, match="'analytic' is already registered; pass overwrite=True"):
            register_attack("analytic", other)
        assert get_attack("analytic") is analytic
        register_attack("analytic", other, overwrite=True)
        assert get_attack("analytic") is other
    finally:
        unregister_attack("analytic")
    assert "analytic" not in attack_names()
    with pytest.raises(ValueError, match="unknown attack 'analytic'"):
        get_attack("analytic")
    for name, build, message in (("", analytic, "non-empty string"), ("x", "analytic", "must be callable")):
        with pytest.raises(ValueError, match=message):
            register_attack(name, build)
