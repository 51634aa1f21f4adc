"""The prior registry: the built-ins register themselves, new priors join build_priors, refusals."""

import dataclasses

import pytest
import torch
from torch import nn

from priors import (
    PRIOR_NAMES,
    AugmentationConsistency,
    BNStatistics,
    L2Norm,
    TotalVariation,
    build_priors,
    prior_names,
    prior_spec,
    register_prior,
    unregister_prior,
)


@pytest.fixture
def cleanup():
    """Names registered by a test, removed afterwards."""
    names = []
    yield names
    for name in names:
        if name in prior_names():
            unregister_prior(name)


def bn_model():
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2)).eval()


def hooks(model):
    return len(model._forward_pre_hooks) + len(model[1]._forward_pre_hooks)


def test_the_built_ins_register_themselves_in_order():
    assert PRIOR_NAMES == ("tv", "l2", "bn", "augment") and prior_names()[:4] == PRIOR_NAMES
    facts = {
        name: (prior_spec(name).build, prior_spec(name).needs_model, prior_spec(name).batchable) for name in PRIOR_NAMES
    }
    assert facts == {
        "tv": (TotalVariation, False, True),
        "l2": (L2Norm, False, True),
        "bn": (BNStatistics, True, False),
        "augment": (AugmentationConsistency, False, False),
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        prior_spec("tv").batchable = False


def test_unknown_names_are_refused_with_the_registered_ones():
    for call in (prior_spec, unregister_prior, lambda name: build_priors({name: 1.0})):
        with pytest.raises(ValueError, match=r"unknown prior.*'tvv'.*'tv', 'l2', 'bn', 'augment'"):
            call("tvv")


def test_a_prior_registered_at_run_time_is_built_weighted_evaluated_last_and_removed(cleanup):
    seen, removed = [], []

    class Recorder:
        """Needs the model; records its calls; 7 for any batch."""

        def __init__(self, model):
            self.model = model

        def __call__(self, x, *, match=None, generator=None):
            seen.append((x, match, generator))
            return x.new_tensor(7.0)

        def remove(self):
            removed.append(self.model)

    register_prior("test_recorder", Recorder, needs_model=True, batchable=False)
    cleanup.append("test_recorder")
    assert prior_names()[-1] == "test_recorder"
    assert prior_spec("test_recorder").needs_model and not prior_spec("test_recorder").batchable
    with pytest.raises(ValueError, match="the 'test_recorder' prior needs the model"):
        build_priors({"test_recorder": 1.0})
    model, x, match, generator = nn.Linear(2, 2), torch.ones(1, 1, 2, 2), lambda z: z.sum(), torch.Generator()
    priors = build_priors({"test_recorder": 0.5, "l2": 1.0}, model=model)
    assert list(priors.priors) == ["l2", "test_recorder"]
    total, terms = priors(x, match=match, generator=generator)
    assert terms == {"l2": pytest.approx(2.0), "test_recorder": 7.0} and total.item() == pytest.approx(2.0 + 3.5)
    assert seen == [(x, match, generator)]
    priors.remove()
    assert removed == [model]


def test_a_failed_build_releases_the_hooks_of_those_built_before(cleanup):
    def refuse(model):
        raise ValueError("test_refuse does not apply")

    register_prior("test_refuse", refuse, needs_model=True)
    cleanup.append("test_refuse")
    model = bn_model()
    before = hooks(model)
    with pytest.raises(ValueError, match="test_refuse does not apply"):
        build_priors({"bn": 1.0, "test_refuse": 1.0}, model=model)
    assert hooks(model) == before


def test_duplicates_are_refused_and_built_ins_never_replaced(cleanup):
    with pytest.raises(ValueError, match="prior 'tv' is already registered; it is built in: choose another name"):
        register_prior("tv", L2Norm, overwrite=True)
    register_prior("test_twice", TotalVariation)
    cleanup.append("test_twice")
    with pytest.raises(ValueError, match="'test_twice' is already registered; pass overwrite=True to replace it"):
        register_prior("test_twice", L2Norm)
    assert prior_spec("test_twice").build is TotalVariation
    register_prior("test_twice", L2Norm, batchable=False, overwrite=True)
    assert prior_spec("test_twice").build is L2Norm and not prior_spec("test_twice").batchable
    with pytest.raises(ValueError, match="prior 'tv' is built in and cannot be removed"):
        unregister_prior("tv")
    with pytest.raises(ValueError, match="the builder of prior 'test_bad' must be callable; got float"):
        register_prior("test_bad", 1.0)
    with pytest.raises(ValueError, match="non-empty string"):
        register_prior("", TotalVariation)
    assert "test_bad" not in prior_names()


def test_every_built_in_takes_the_built_prior_call():
    model, x = bn_model(), torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    match, generator = lambda z: model(z).square().mean(), torch.Generator().manual_seed(1)
    for name in PRIOR_NAMES:
        spec = prior_spec(name)
        prior = spec.build(model) if spec.needs_model else spec.build()
        model(x)
        assert prior(x, match=match, generator=generator).ndim == 0, name
    with pytest.raises(ValueError, match="the 'augment' prior needs match= and generator="):
        AugmentationConsistency()(x, generator=generator)
