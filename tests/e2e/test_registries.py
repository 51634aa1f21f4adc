"""A label method and an image prior registered at run time work through the whole attack (inversion.invert), the
attack settings and the configs, without touching the library."""

import dataclasses

import numpy as np
import pytest
import torch

import inversion as gl
from inversion.attack import AttackSettings, Inversion, register_attack, unregister_attack
from inversion.attack.labels import label_modes
from inversion.config import ConfigError, InvertConfig, load_config
from inversion.fl import client_update
from inversion.models import build_model
from label_restore import register_method, unregister_method
from label_restore.result import make_result
from priors import register_prior, unregister_prior

TRUE_LABELS = [0, 2, 3]
FIXED = [1, 1, 3]  # the new method's answer, whatever the update: not the client's labels


def fixed_answer(grad_weight, grad_bias, weight, bias, batch_size):
    """A label method that needs the final layer and always restores FIXED."""
    counts = np.bincount(FIXED, minlength=len(grad_bias))
    return make_result("test_fixed", counts, counts, counts > 0, int(batch_size))


class L1:
    """A prior: the mean absolute value of the dummies (pulls them towards 0); counts its calls."""

    calls = 0

    def __call__(self, x, *, match=None, generator=None):
        L1.calls += 1
        return x.abs().mean()


@pytest.fixture
def registered():
    register_method("test_fixed", fixed_answer)
    register_prior("test_l1", L1)
    yield
    unregister_method("test_fixed")
    unregister_prior("test_l1")


def tiny_problem():
    """FCN-3 on 6x6 grey images, C = 4 classes, K = 3."""
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=0)
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(12345))
    return model, client_update(model, images, torch.tensor(TRUE_LABELS))


def invert(update, model, priors, labels="test_fixed"):
    return gl.invert(update, model, labels=labels, priors=priors, max_steps=30, device="cpu", progress=False)


def test_invert_uses_the_new_label_method_and_the_new_prior(registered):
    model, update = tiny_problem()
    assert gl.invert(update, model, labels="ilrg", max_steps=1, progress=False).labels.tolist() == TRUE_LABELS
    L1.calls = 0
    with_l1 = invert(update, model, {"test_l1": 10.0, "tv": 1e-4})
    assert with_l1.label_mode == "test_fixed" and with_l1.restoration.method == "test_fixed"
    assert with_l1.labels.tolist() == FIXED == with_l1.attack.labels.tolist()
    assert L1.calls >= 30  # at least once per step
    without = invert(update, model, {"tv": 1e-4})
    assert with_l1.labels.tolist() == without.labels.tolist()
    # the prior's weight pulls the dummies towards 0, against the matching loss
    assert float(with_l1.images.abs().mean()) < 0.5 * float(without.images.abs().mean())
    assert with_l1.loss > without.loss


def test_a_method_that_needs_the_whole_update_runs_in_invert():
    model, update = tiny_problem()
    seen = []

    def from_update(update, model, *, batch_size):
        seen.append((update, model, batch_size))
        return fixed_answer(None, np.zeros(4), None, None, batch_size)

    register_method("test_from_update", from_update, needs="update")
    try:
        result = invert(update, model, {}, labels="test_from_update")
    finally:
        unregister_method("test_from_update")
    assert result.labels.tolist() == FIXED and seen == [(dataclasses.replace(update, meta=result.meta), model, 3)]


def test_settings_and_configs_take_a_method_registered_at_run_time():
    assert "test_fixed" not in label_modes()
    with pytest.raises(ValueError, match="unknown label mode 'test_fixed'; choose one of oracle, joint, shared, ilrg"):
        AttackSettings(labels="test_fixed")
    register_method("test_fixed", fixed_answer)
    try:
        assert label_modes()[-1] == "test_fixed"
        assert AttackSettings(labels="test_fixed").labels == "test_fixed"
        assert load_config(InvertConfig, None, ["attack.labels=test_fixed"]).attack.labels == "test_fixed"
    finally:
        unregister_method("test_fixed")


def test_the_pipeline_builds_the_attack_its_settings_name():
    """An attack registered at run time is what ``invert`` builds when ``method`` names it; configs accept the name
    only while it is registered, and refuse an unknown one naming the key."""
    built = []

    def traced(*args, **kwargs):
        built.append(kwargs["priors"])
        return Inversion(*args, **kwargs)

    model, update = tiny_problem()
    with pytest.raises(ValueError, match="^method: unknown attack 'test_traced'; choose one of gradient_matching"):
        AttackSettings(method="test_traced")
    with pytest.raises(ConfigError, match=r"^attack\.method: unknown attack"):
        load_config(InvertConfig, overrides=["attack.method=test_traced"])
    register_attack("test_traced", traced)
    try:
        result = gl.invert(update, model, labels="ilrg", method="test_traced", max_steps=2, progress=False)
        assert len(built) == 1 and result.labels.tolist() == TRUE_LABELS
        assert load_config(InvertConfig, overrides=["attack.method=test_traced"]).attack.method == "test_traced"
        gl.invert(update, model, labels="ilrg", max_steps=2, progress=False)  # the default: not the traced one
        assert len(built) == 1
    finally:
        unregister_attack("test_traced")
