"""Batched restarts: R restarts as one batched problem, the same optimisation as R sequential runs."""

import pytest
import torch

from inversion.attack import AttackSettings, GradientMatcher, Inversion, plan_labels
from inversion.fl import client_update
from inversion.models import build_model

BOX = (torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
RESTARTS = 4


def problem():
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=0)
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(12345))
    labels = torch.tensor([0, 2, 3])
    return model, client_update(model, images, labels), labels


def attack(mode="oracle", priors=None, **settings):
    model, update, labels = problem()
    plan = plan_labels(mode, update, model, true_labels=labels if mode == "oracle" else None)
    return Inversion(model, update, plan, AttackSettings(**settings), bounds=BOX, image_shape=(1, 6, 6), priors=priors)


def loss_of(inversion, images):
    return float(inversion.problem.match(images.clone().requires_grad_(True), None).detach())


def test_the_batched_matcher_equals_the_single_one_per_restart():
    target = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[2.0]])}
    stacked = [torch.randn(3, 2), torch.randn(3, 1, 1)]
    for objective in ("cosine", "l2"):
        matcher = GradientMatcher(target, ["a", "b"], objective, layer_weights={"b": 0.5})
        one_by_one = torch.stack([matcher([stacked[0][r], stacked[1][r]]) for r in range(3)])
        assert torch.allclose(matcher.batched(stacked), one_by_one, atol=1e-6)


@pytest.mark.parametrize("span", ["never", "always"])
def test_batched_restarts_follow_the_sequential_ones_and_the_lowest_loss_wins(span):
    settings = dict(max_steps=12, restarts=RESTARTS, lr=0.3, init="rand", span=span, seed=3)
    sequential = attack(batch_restarts="never", **settings)
    batched = attack(batch_restarts="always", **settings)
    assert sequential.runner.batched is None and batched.runner.batched is not None
    one, together = sequential.run(progress=False), batched.run(progress=False)
    # the same optimisation: each restart ends at (nearly) the same best loss, computed in another order
    assert together.restart_losses == pytest.approx(one.restart_losses, rel=1e-3, abs=1e-7)
    assert together.steps == one.steps == 12 * RESTARTS
    # the restart with the lowest loss wins, and the images returned are its best iterate
    lowest = min(range(RESTARTS), key=together.restart_losses.__getitem__)
    assert lowest not in (0, RESTARTS - 1)  # the premise: neither the first nor the last restart wins here
    assert together.restart == lowest and together.loss == together.restart_losses[lowest]
    assert loss_of(batched, together.images) == pytest.approx(together.loss, rel=1e-4)


def test_batched_restarts_weigh_the_image_priors_as_each_restart_would():
    settings = dict(max_steps=10, restarts=3, init="rand", span="never", priors={"tv": 0.1, "l2": 0.01})
    one = attack(batch_restarts="never", **settings).run(progress=False)
    together = attack(batch_restarts="always", **settings).run(progress=False)
    assert together.restart_losses == pytest.approx(one.restart_losses, rel=1e-4)


def test_an_interrupted_batched_attack_resumes_bit_identically(tmp_path):
    settings = dict(max_steps=20, restarts=3, lr=0.05, batch_restarts="always", init="rand")
    straight = attack(**settings).run(progress=False)
    calls = []

    def ctrl_c_on_the_third_call(_images):
        calls.append(1)
        if len(calls) == 3:  # steps 0, 5, 10 -> Ctrl-C after the checkpoint of step 10
            raise KeyboardInterrupt
        return 0.0

    stopped = attack(**settings).run(
        progress=False,
        monitor=ctrl_c_on_the_third_call,
        monitor_every=5,
        checkpoint=tmp_path / "ckpt.pt",
        checkpoint_every=5,
    )
    assert stopped.interrupted and len(stopped.restart_losses) == 3
    second = attack(**settings)
    second.load_checkpoint(tmp_path / "ckpt.pt")
    resumed = second.run(progress=False)
    assert torch.equal(resumed.images, straight.images) and resumed.restart_losses == straight.restart_losses
    with pytest.raises(ValueError, match="ran its restarts batched"):
        attack(**{**settings, "batch_restarts": "never"}).load_checkpoint(tmp_path / "ckpt.pt")


def test_a_restart_that_reaches_stop_loss_is_frozen_while_the_others_go_on():
    free = attack(max_steps=40, restarts=3, lr=0.1, batch_restarts="always", init="rand", span="never")
    result = free.run(progress=False)
    stop = sum(sorted(result.restart_losses)[:2]) / 2  # reached by the best restart only
    stopped = attack(
        max_steps=40, restarts=3, lr=0.1, batch_restarts="always", init="rand", span="never", stop_loss=stop
    )
    frozen = stopped.run(progress=False, snapshot_every=1)
    done = [r for r in range(3) if frozen.restart_losses[r] <= stop]
    assert done and len(done) < 3
    for r in done:  # from the first iterate at or below stop_loss on, its dummies no longer move
        moves = [images for restart, _, images in frozen.snapshots if restart == r]
        reached = next(i for i, images in enumerate(moves) if loss_of(stopped, images) <= stop * (1 + 1e-5))
        assert reached < len(moves) - 2 and all(torch.equal(m, moves[reached]) for m in moves[reached:])
    assert frozen.steps == 40 * 3  # the others went on to the end


def test_auto_batches_only_on_cuda_and_always_says_why_it_cannot():
    assert attack(restarts=3).runner.batched is None  # auto on the CPU: one after another, as before
    assert attack(restarts=1, batch_restarts="always").runner.batched is None  # nothing to batch
    for mode, settings, why in (
        ("joint", {}, "learnable labels"),
        ("oracle", {"optimizer": "lbfgs", "signed": False}, "L-BFGS"),
    ):
        with pytest.raises(ValueError, match=why):
            attack(mode, restarts=2, batch_restarts="always", **settings)


def test_the_priors_registry_says_which_priors_batch():
    """A prior that is not batchable (its spec says so, whatever its name) keeps the restarts sequential."""
    from priors import register_prior, unregister_prior

    def mean_square(x, *, match=None, generator=None):
        return (x**2).mean()

    register_prior("test_sq", lambda: mean_square)
    register_prior("test_sq_hooked", lambda: mean_square, batchable=False)
    try:
        assert attack(restarts=2, batch_restarts="always", priors={"test_sq": 0.1}).runner.batched is not None
        with pytest.raises(ValueError, match=r"with the augment and test_sq_hooked prior\(s\)"):
            attack(restarts=2, batch_restarts="always", priors={"test_sq_hooked": 0.1, "tv": 0.1, "augment": 0.1})
        assert attack(restarts=2, batch_restarts="always", priors={"test_sq_hooked": 0.0}).runner.batched is not None
    finally:
        unregister_prior("test_sq")
        unregister_prior("test_sq_hooked")
