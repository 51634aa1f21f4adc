"""The attack core: matching objectives, label modes, the optimisation loop and bit-identical resume."""
import math

import pytest
import torch

from inversion.attack import AttackSettings, GradientMatcher, Inversion, lr_factor, plan_labels
from inversion.client import compute_shared_update
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
    update = compute_shared_update(model, images, labels)
    return model, update


def attack(model, update, mode="oracle", **settings):
    plan = plan_labels(mode, update, model)
    bounds = (torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    return Inversion(model, update, plan, AttackSettings(**settings), bounds=bounds, image_shape=(1, 6, 6))


def best_psnr(recon, truth):
    """PSNR of the best one-to-one pairing (brute force: the batch is tiny)."""
    import itertools
    mse = min(float(((recon[list(p)] - truth) ** 2).mean()) for p in itertools.permutations(range(len(truth))))
    return 10 * math.log10(1 / mse)


def test_oracle_attack_drives_loss_down_and_psnr_up():
    model, update = tiny_problem()
    inversion = attack(model, update, max_steps=300, lr=0.05, init="rand")
    start = inversion._fresh_restart(0)["x"]
    start_loss = float(inversion.match(start.clone().requires_grad_(True), None).detach())
    result = inversion.run(progress=False)
    assert result.loss < 0.05 * start_loss
    assert best_psnr(result.images, update.truth.images) > best_psnr(start.detach(), update.truth.images) + 5
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1  # boxed
    assert result.labels.tolist() == [0, 2, 3] and not result.interrupted


def test_ilrg_labels_equal_oracle_where_restoration_is_exact():
    model, update = tiny_problem()
    assert plan_labels("ilrg", update, model).fixed.tolist() == plan_labels("oracle", update, model).fixed.tolist()


@pytest.mark.parametrize("mode,shape", [("joint", (3, 4)), ("shared", (4,))])
def test_learnable_label_modes(mode, shape):
    model, update = tiny_problem()
    inversion = attack(model, update, mode, max_steps=5)
    assert inversion._fresh_restart(0)["label_logits"].shape == shape
    result = inversion.run(progress=False)
    assert result.labels.shape == (3,) and result.labels.max() < 4
    if mode == "shared":
        assert len(set(result.labels.tolist())) == 1


def test_lbfgs_and_setting_errors():
    model, update = tiny_problem()
    result = attack(model, update, optimizer="lbfgs", signed=False, lr=0.5, max_steps=3).run(progress=False)
    assert math.isfinite(result.loss)
    with pytest.raises(ValueError, match="signed gradients are an Adam option"):
        AttackSettings(optimizer="lbfgs", signed=True)
    with pytest.raises(ValueError, match="unknown init"):
        AttackSettings(init="ones")
    with pytest.raises(ValueError, match="unknown label mode"):
        plan_labels("dlg", update, model)


def test_restarts_keep_the_best_by_matching_loss():
    model, update = tiny_problem()
    result = attack(model, update, max_steps=20, restarts=3).run(progress=False)
    assert len(result.restart_losses) == 3
    assert result.loss == min(result.restart_losses) and result.restart == result.restart_losses.index(result.loss)


def test_interrupt_then_resume_is_bit_identical(tmp_path):
    model, update = tiny_problem()
    settings = {"max_steps": 30, "restarts": 2, "lr": 0.05}
    straight = attack(model, update, **settings).run(progress=False)

    calls = []

    def ctrl_c_on_the_fourth_call(_images):
        calls.append(1)
        if len(calls) == 4:  # steps 0, 10, 20 of restart 0, then step 0 of restart 1 -> Ctrl-C
            raise KeyboardInterrupt
        return 0.0

    first = attack(model, update, **settings)
    stopped = first.run(progress=False, monitor=ctrl_c_on_the_fourth_call, monitor_every=10,
                        checkpoint=tmp_path / "ckpt.pt", checkpoint_every=10)
    assert stopped.interrupted
    second = attack(model, update, **settings)
    second.load_checkpoint(tmp_path / "ckpt.pt")
    resumed = second.run(progress=False)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.restart_losses == straight.restart_losses
