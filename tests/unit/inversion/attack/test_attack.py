"""The attack core: matching objectives, label modes, the optimisation loop and bit-identical resume."""

import math

import pytest
import torch

import inversion as gl
from inversion.attack import AttackSettings, GradientMatcher, Inversion, lr_factor, plan_labels
from inversion.attack.steppers import SequentialStepper
from inversion.fl import PrivateBatch, SharedUpdate, client_update
from inversion.models import build_model

TARGET = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[2.0]])}


def test_cosine_and_l2_by_hand():
    cos = GradientMatcher(TARGET, ["a", "b"], "cosine")
    assert float(cos([TARGET["a"], TARGET["b"]])) == pytest.approx(0.0, abs=1e-6)
    assert float(cos([-TARGET["a"], -TARGET["b"]])) == pytest.approx(2.0, abs=1e-6)
    # <(1,0,0),(1,2,2)> / (1 * 3) = 1/3
    assert float(cos([torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])])) == pytest.approx(1 - 1 / 3, abs=1e-6)
    l2 = GradientMatcher(TARGET, ["a", "b"], "l2")
    assert float(l2([torch.tensor([0.0, 0.0]), torch.tensor([[0.0]])])) == pytest.approx(9.0)
    weighted = GradientMatcher(TARGET, ["a", "b"], "l2", layer_weights={"b": 0.5})
    assert float(weighted([torch.tensor([0.0, 0.0]), torch.tensor([[0.0]])])) == pytest.approx(5.0 + 2.0)
    with pytest.raises(ValueError, match="no gradient for"):
        GradientMatcher(TARGET, ["c"])
    with pytest.raises(ValueError, match="unknown objective"):
        GradientMatcher(TARGET, ["a"], "l1")


def test_step_schedule_decays_at_three_eighths_five_eighths_seven_eighths():
    factors = [lr_factor("step", s, 80) for s in (0, 29, 30, 49, 50, 69, 70, 79)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_factor("cosine", 40, 80) == pytest.approx(0.5) and lr_factor("none", 70, 80) == 1.0


def tiny_problem(batch_size=3, seed=0):
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=seed)
    generator = torch.Generator().manual_seed(seed + 12345)  # not the attack's init seed
    images = torch.rand(batch_size, 1, 6, 6, generator=generator)
    labels = torch.tensor([0, 2, 3][:batch_size])
    update = client_update(model, images, labels)
    return model, update, images, labels


TRUE_LABELS = torch.tensor([0, 2, 3])


def attack(model, update, mode="oracle", true_labels=TRUE_LABELS, **settings):
    plan = plan_labels(mode, update, model, true_labels=true_labels if mode == "oracle" else None)
    bounds = (torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    return Inversion(model, update, plan, AttackSettings(**settings), bounds=bounds, image_shape=(1, 6, 6))


def best_psnr(recon, truth):
    """PSNR of the best one-to-one pairing (brute force: the batch is tiny)."""
    import itertools

    mse = min(float(((recon[list(p)] - truth) ** 2).mean()) for p in itertools.permutations(range(len(truth))))
    return 10 * math.log10(1 / mse)


def test_oracle_attack_drives_loss_down_and_psnr_up():
    model, update, images, _ = tiny_problem()
    inversion = attack(model, update, max_steps=300, lr=0.05, init="rand", span="never")  # exactly boxed pixels
    start = inversion.problem.images(inversion.problem.fresh_restart(0).x)
    start_loss = float(inversion.problem.match(start.clone().requires_grad_(True), None).detach())
    result = inversion.run(progress=False)
    assert result.loss < 0.05 * start_loss
    assert best_psnr(result.images, images) > best_psnr(start.detach(), images) + 5
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1  # boxed
    assert result.labels.tolist() == [0, 2, 3] and not result.interrupted


def test_ilrg_labels_equal_oracle_where_restoration_is_exact():
    model, update, _, labels = tiny_problem()
    oracle = plan_labels("oracle", update, model, true_labels=labels)
    assert plan_labels("ilrg", update, model).fixed.tolist() == oracle.fixed.tolist()


@pytest.mark.parametrize("mode,shape", [("joint", (3, 4)), ("shared", (4,))])
def test_learnable_label_modes(mode, shape):
    model, update, _, _ = tiny_problem()
    inversion = attack(model, update, mode, max_steps=5)
    assert inversion.problem.fresh_restart(0).label_logits.shape == shape
    result = inversion.run(progress=False)
    assert result.labels.shape == (3,) and result.labels.max() < 4
    if mode == "shared":
        assert len(set(result.labels.tolist())) == 1


def test_lbfgs_and_setting_errors():
    model, update, _, _ = tiny_problem()
    result = attack(model, update, optimizer="lbfgs", signed=False, lr=0.5, max_steps=3).run(progress=False)
    assert math.isfinite(result.loss)
    with pytest.raises(ValueError, match="signed gradients are an Adam option"):
        AttackSettings(optimizer="lbfgs", signed=True)
    with pytest.raises(ValueError, match="unknown init"):
        AttackSettings(init="ones")
    with pytest.raises(ValueError, match="unknown label mode"):
        plan_labels("dlg", update, model)
    with pytest.raises(ValueError, match="needs the true labels"):
        plan_labels("oracle", update, model)
    with pytest.raises(ValueError, match="must be >= 0"):
        AttackSettings(checkpoint_every=-5)
    with pytest.raises(ValueError, match="monitor_every must be >= 1"):
        AttackSettings(monitor_every=0)


def test_restarts_keep_the_best_by_matching_loss():
    model, update, _, _ = tiny_problem()
    result = attack(model, update, max_steps=20, restarts=3).run(progress=False)
    assert len(result.restart_losses) == 3
    assert result.loss == min(result.restart_losses) and result.restart == result.restart_losses.index(result.loss)


def test_interrupt_then_resume_is_bit_identical(tmp_path):
    model, update, _, _ = tiny_problem()
    settings = {"max_steps": 30, "restarts": 2, "lr": 0.05}
    straight = attack(model, update, **settings).run(progress=False)

    calls = []

    def ctrl_c_on_the_fourth_call(_images):
        calls.append(1)
        if len(calls) == 4:  # steps 0, 10, 20 of restart 0, then step 0 of restart 1 -> Ctrl-C
            raise KeyboardInterrupt
        return 0.0

    first = attack(model, update, **settings)
    stopped = first.run(
        progress=False,
        monitor=ctrl_c_on_the_fourth_call,
        monitor_every=10,
        checkpoint=tmp_path / "ckpt.pt",
        checkpoint_every=10,
    )
    assert stopped.interrupted
    second = attack(model, update, **settings)
    second.load_checkpoint(tmp_path / "ckpt.pt")
    resumed = second.run(progress=False)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.restart_losses == straight.restart_losses


def test_hidden_batch_size_needs_a_guess():
    model, update, _, _ = tiny_problem()
    hidden = SharedUpdate.from_gradients(update.gradients, None, update.meta)
    with pytest.raises(ValueError, match="does not reveal the batch size"):
        plan_labels("ilrg", hidden, model)
    assert plan_labels("ilrg", hidden, model, batch_size=3).fixed.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="contradicts the update"):
        plan_labels("ilrg", update, model, batch_size=4)


def test_known_labels_must_be_k_class_indices_of_the_model():
    model, update, images, labels = tiny_problem()  # C = 4 classes, K = 3
    for bad, match in [
        (torch.tensor([0, 2, 4]), r"must lie in \[0, 4\) .* got min 0, max 4"),
        (torch.tensor([0, -100, 3]), r"must lie in \[0, 4\)"),  # -100: cross_entropy's ignore_index
        (torch.tensor([0.0, 2.0, 3.0]), "integer class indices, got dtype torch.float32"),
        (torch.tensor([0, 2]), r"shape \(2,\), expected \(3,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            gl.invert(update, model, labels=bad, max_steps=1, progress=False)
    result = gl.invert(update, model, labels=labels, max_steps=1, progress=False)
    assert result.label_mode == "given" and result.labels.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="tied to no update"):  # a private batch not linked to the update
        gl.score(result, PrivateBatch(images, labels), lpips=False)


def test_the_attack_leaves_the_callers_model_alone():
    model = build_model("convnet", num_classes=4, in_channels=1, image_size=(12, 12), width=4, seed=1)
    model.eval()
    images, labels = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 3])
    update = client_update(model, images, labels, bn_mode="train", mean=(0.0,), std=(1.0,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()]
    model.fc.weight.requires_grad_(False)  # a frozen layer of the caller's stays frozen
    inversion = Inversion(
        model, update, plan_labels("ilrg", update, model), AttackSettings(max_steps=4), priors={"bn": 0.1, "tv": 0.01}
    )
    result = inversion.run(progress=False)
    assert math.isfinite(result.loss)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # incl. batch-norm statistics
    assert [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()] == hooks
    assert not any(len(m._forward_pre_hooks) for m in inversion.problem.model.modules())  # the prior's hooks are gone
    assert not model.training and not model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


# --- the loop's guarantees, each checked so that breaking it fails a test ------------------------------------
def test_priors_are_added_to_the_matching_loss():
    from priors import build_priors, total_variation

    model, update, _, _ = tiny_problem()
    plain = attack(model, update, max_steps=40, lr=0.05, init="rand")
    smooth = Inversion(
        model,
        update,
        plain.problem.plan,
        plain.problem.settings,
        bounds=(plain.problem.lower, plain.problem.upper),
        image_shape=(1, 6, 6),
        priors={"tv": 2.0},
    )
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    smooth.problem.priors = build_priors({"tv": 2.0})  # as run() builds them
    total, matching, _ = smooth.problem.objective(x.clone().requires_grad_(True), None)
    smooth.problem.priors = None
    assert float(total.detach()) == pytest.approx(float(matching.detach()) + 2.0 * float(total_variation(x)), rel=1e-6)
    tv_plain = float(total_variation(plain.run(progress=False).images))
    tv_smooth = float(total_variation(smooth.run(progress=False).images))
    assert tv_smooth < 0.5 * tv_plain  # the prior pulls the dummies towards smooth images, not away


def test_the_sign_step_applies_to_the_images_only_not_to_the_label_logits():
    model, update, _, _ = tiny_problem()
    problem = attack(model, update, "joint", max_steps=5, signed=True).problem
    stepper = SequentialStepper(problem, problem.fresh_restart(0))
    total, _, _ = problem.objective(problem.images(stepper.x), stepper.logits)
    raw_x, raw_logits = torch.autograd.grad(total, [stepper.x, stepper.logits])
    stepper.step()
    assert torch.equal(stepper.x.grad, raw_x.sign())
    assert torch.allclose(stepper.logits.grad, raw_logits) and not torch.equal(stepper.logits.grad, raw_logits.sign())


def test_the_returned_images_are_the_best_iterate_of_the_best_restart():
    """result.images is the lowest-loss iterate of all restarts (not the last one, nor another restart's)."""
    model, update, _, _ = tiny_problem()
    inversion = attack(model, update, max_steps=25, restarts=3, lr=0.3, span="never")  # a large step: oscillates
    starts = [inversion.problem.images(inversion.problem.fresh_restart(r).x) for r in range(3)]
    result = inversion.run(progress=False, snapshot_every=1)

    def loss_of(images):
        return float(inversion.problem.match(images.clone().requires_grad_(True), None).detach())

    iterates = {r: [starts[r]] + [images for restart, _, images in result.snapshots if restart == r] for r in range(3)}
    losses = {r: [loss_of(x) for x in iterates[r][:-1]] for r in range(3)}  # the iterates the attack evaluated
    assert result.restart_losses == pytest.approx([min(losses[r]) for r in range(3)], rel=1e-5)
    assert len(set(result.restart_losses)) == 3 and result.loss == min(result.restart_losses)
    assert loss_of(result.images) == pytest.approx(result.loss, rel=1e-5)
    assert losses[result.restart][-1] > result.loss * 1.01  # the last iterate was not the best here


def test_the_learning_rate_follows_the_schedule_at_every_step(monkeypatch):
    model, update, _, _ = tiny_problem()
    used = []
    real_step = SequentialStepper.step

    def spy(self):
        used.append(self.optimizer.param_groups[0]["lr"])
        return real_step(self)

    monkeypatch.setattr(SequentialStepper, "step", spy)
    attack(model, update, max_steps=16, lr=0.2, schedule="step").run(progress=False)
    assert used == pytest.approx([0.2 * lr_factor("step", step, 16) for step in range(16)])
    assert used[0] == pytest.approx(0.2) and used[-1] == pytest.approx(0.2e-3)


def test_batch_norm_running_statistics_stay_frozen_during_a_train_mode_attack():
    """bn_mode=train: the dummies' batch statistics normalise, the running ones (the bn prior's target) stay put."""
    model = build_model("convnet", num_classes=4, in_channels=1, image_size=(12, 12), width=4, seed=1)
    images, labels = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 3])
    update = client_update(model, images, labels, bn_mode="train", mean=(0.0,), std=(1.0,))
    inversion = Inversion(
        model, update, plan_labels("ilrg", update, model), AttackSettings(max_steps=6), priors={"bn": 0.1}
    )
    running = {k: v.clone() for k, v in inversion.problem.model.state_dict().items() if "running" in k}
    layer = next(m for m in inversion.problem.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before, seen = layer.running_mean.clone(), []
    layer.register_forward_pre_hook(lambda module, inputs: seen.append(module.running_mean.clone()))
    inversion.run(progress=False)
    assert len(seen) >= 6 and all(torch.equal(mean, before) for mean in seen)  # the target never moved
    assert all(torch.equal(v, running[k]) for k, v in inversion.problem.model.state_dict().items() if k in running)


def test_unreadable_pickled_or_incomplete_checkpoints_are_refused_in_one_line(tmp_path):
    model, update, _, _ = tiny_problem()
    done = attack(model, update, max_steps=4)
    done.run(progress=False)
    done.save_checkpoint(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": "gradleak.InversionCheckpoint", "version": 2, "evil": math.sqrt}, tmp_path / "pickled.pt")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    del payload["steps"]
    torch.save(payload, tmp_path / "incomplete.pt")
    torch.save({**payload, "steps": 4, "version": 1}, tmp_path / "old.pt")
    for name, message in (
        ("cut", "truncated or corrupt"),
        ("pickled", "refused for security"),
        ("incomplete", "incomplete checkpoint .*steps"),
        ("old", "version-1 checkpoint"),
        ("missing", "no checkpoint file"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=message) as raised:
            attack(model, update, max_steps=4).load_checkpoint(tmp_path / f"{name}.pt")
        assert len(str(raised.value).splitlines()) == 1
    attack(model, update, max_steps=4).load_checkpoint(tmp_path / "good.pt")  # the intact one loads
