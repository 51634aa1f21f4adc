"""The label-method registry: built-ins and what they need, run-time registration, refusals."""

import dataclasses

import numpy as np
import pytest
import torch

from label_restore import (
    METHOD_NAMES,
    NEEDS,
    available_methods,
    get_method,
    method_spec,
    register_method,
    restore_labels,
    unregister_method,
)
from label_restore.result import make_result


@pytest.fixture
def cleanup():
    """Names registered by a test, removed afterwards."""
    names = []
    yield names
    for name in names:
        if name in available_methods():
            unregister_method(name)


def test_the_built_ins_and_what_they_need():
    assert METHOD_NAMES == ("ilrg", "aux", "idlg", "gi", "rlg", "llg", "bias_corrected")
    assert available_methods()[: len(METHOD_NAMES)] == METHOD_NAMES
    assert NEEDS == ("final_layer", "auxiliary", "update")
    needs = {name: method_spec(name).needs for name in METHOD_NAMES}
    assert needs == {name: "auxiliary" if name == "aux" else "final_layer" for name in METHOD_NAMES}
    spec = method_spec("ilrg")
    assert spec.name == "ilrg" and spec.fn is get_method("ilrg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.needs = "update"


def test_unknown_names_are_refused_with_the_valid_ones():
    for call in (method_spec, get_method, unregister_method, lambda name: restore_labels(name, batch_size=1)):
        with pytest.raises(ValueError, match=r"unknown label-restoration method 'ilgr'; valid methods: ilrg, aux, "):
            call("ilgr")


def test_a_method_registered_at_run_time_is_listed_and_run(cleanup):
    def const(grad_weight=None, grad_bias=None, weight=None, bias=None, batch_size=None):
        return restore_labels("idlg", grad_weight, batch_size=batch_size)

    register_method("test_const", const)
    cleanup.append("test_const")
    assert available_methods()[-1] == "test_const" and method_spec("test_const").needs == "final_layer"
    assert restore_labels("test_const", grad_weight=-torch.ones(3, 2), batch_size=3).counts.tolist() == [1, 1, 1]
    unregister_method("test_const")
    assert "test_const" not in available_methods()


def test_an_auxiliary_method_takes_the_auxiliary_statistics_as_options(cleanup):
    def class_means(grad_weight, grad_bias, weight, bias, batch_size, *, aux_probs, aux_labels):
        counts = np.bincount(np.asarray(aux_labels)[: int(batch_size)], minlength=len(grad_bias))
        return make_result("test_aux_options", counts, counts, counts > 0, int(batch_size))

    register_method("test_aux_options", class_means, needs="auxiliary")
    cleanup.append("test_aux_options")
    r = restore_labels("test_aux_options", grad_bias=[0.1, -0.1], batch_size=3, aux_probs=None, aux_labels=[1, 0, 1])
    assert r.counts.tolist() == [1, 2]


def test_duplicates_are_refused_and_built_ins_never_replaced(cleanup):
    def fn(*args, **kwargs):
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="method 'ilrg' is already registered; it is built in: choose another name"):
        register_method("ilrg", fn, overwrite=True)
    register_method("test_twice", fn)
    cleanup.append("test_twice")
    with pytest.raises(ValueError, match="'test_twice' is already registered; pass overwrite=True to replace it"):
        register_method("test_twice", fn, needs="update")
    assert method_spec("test_twice").needs == "final_layer"
    register_method("test_twice", fn, needs="update", overwrite=True)
    assert method_spec("test_twice").needs == "update"
    with pytest.raises(ValueError, match="'ilrg' is built in and cannot be removed"):
        unregister_method("ilrg")


def test_bad_registrations_are_refused(cleanup):
    cleanup.append("test_bad")
    with pytest.raises(ValueError, match=r"'test_bad': needs='model' is not one of final_layer, auxiliary, update"):
        register_method("test_bad", lambda *a: None, needs="model")
    with pytest.raises(ValueError, match="fn must be callable; got int"):
        register_method("test_bad", 3)
    with pytest.raises(ValueError, match="non-empty string"):
        register_method("", lambda *a: None)
    assert "test_bad" not in available_methods()


def test_restore_labels_refuses_a_method_that_needs_the_update(cleanup):
    register_method("test_whole_update", lambda update, model, batch_size: None, needs="update")
    cleanup.append("test_whole_update")
    with pytest.raises(ValueError, match="'test_whole_update' needs the whole update .*restore_from_update"):
        restore_labels("test_whole_update", grad_bias=[0.1, -0.1], batch_size=2)
