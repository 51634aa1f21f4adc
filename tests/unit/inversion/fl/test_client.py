"""The FL client: FedSGD gradients (hand-checked), chunking, batch-norm modes, final-layer-only updates."""

import pytest
import torch
from torch import nn

from inversion.fl import client_gradients, client_update, final_layer_client_gradients
from inversion.models import build_model


def test_gradient_of_mean_cross_entropy_by_hand():
    # logits z = W x + b; d(mean CE)/dW = (1/K) sum_k (p_k - onehot_k) x_k^T, d/db = mean_k (p_k - onehot_k)
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    y = torch.tensor([2, 0])
    p = torch.softmax(x @ layer.weight.T + layer.bias, dim=1)
    residual = p - torch.eye(3)[y]
    grads = client_gradients(layer, x, y)
    torch.testing.assert_close(grads["weight"], residual.T @ x / 2)
    torch.testing.assert_close(grads["bias"], residual.mean(0))
    # the bias gradient of mean CE sums to zero over classes (softmax rows and one-hots both sum to 1)
    assert abs(float(grads["bias"].sum())) < 1e-6


def small_bn_model():
    return build_model("convnet", num_classes=5, in_channels=3, image_size=(16, 16), width=4, seed=3)


def test_chunked_gradient_equals_full_batch_in_eval_mode():
    # Chunking is exact in real arithmetic. In float32 the full batch's bias gradients (sums of ~3,000 terms
    # with heavy cancellation) carry rounding errors of ~2 % on some CPUs, so the identity is checked in
    # float64: there the same sums err by < 1e4 terms x 1.1e-16 x 0.1 ~ 1e-13, far below atol=1e-10,
    # while a chunk weighted wrongly (1/chunk instead of 1/K, or a chunk dropped) is off by > 1e-4.
    model = small_bn_model().double()
    torch.manual_seed(0)
    x, y = torch.randn(11, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (11,))
    full = client_gradients(model, x, y)
    for chunk in (1, 3, 4, 11, 64):
        chunked = client_gradients(model, x, y, chunk_size=chunk)
        assert chunked.keys() == full.keys()
        for name in full:
            torch.testing.assert_close(chunked[name], full[name], rtol=1e-8, atol=1e-10)


def test_client_leaves_model_untouched():
    model = small_bn_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    eval_grads = client_gradients(model, x, y, bn_mode="eval")
    train_grads = client_gradients(model, x, y, bn_mode="train")
    assert model.training  # mode restored
    for k, v in model.state_dict().items():  # running statistics restored after train mode
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    # batch statistics instead of running statistics change the gradient
    assert not torch.allclose(eval_grads["fc.weight"], train_grads["fc.weight"])


def test_train_mode_refuses_chunking():
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="train-mode batch norm"):
        client_gradients(small_bn_model(), x, y, bn_mode="train", chunk_size=2)
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        client_gradients(small_bn_model(), x, y, bn_mode="frozen")
    with pytest.raises(ValueError, match="must agree"):
        client_gradients(small_bn_model(), x, y[:3])


@pytest.mark.parametrize("bn_mode,chunk", [("eval", None), ("eval", 4), ("train", None)])
def test_final_layer_only_equals_the_full_computation(bn_mode, chunk):
    model = small_bn_model()
    torch.manual_seed(1)
    x, y = torch.randn(10, 3, 16, 16), torch.randint(0, 5, (10,))
    full = client_gradients(model, x, y, bn_mode=bn_mode)
    head = final_layer_client_gradients(model, x, y, bn_mode=bn_mode, chunk_size=chunk)
    assert set(head) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(head["fc.weight"], full["fc.weight"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head["fc.bias"], full["fc.bias"], rtol=1e-5, atol=1e-7)


def test_final_layer_only_update_without_bias_and_for_foreign_models():
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(4, 4), width=8, final_bias=False)
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 0, 1, 3, 3])
    update = client_update(model, x, y, parameters="final_layer")
    assert set(update.gradients) == {"fc.weight"} and update.meta.notes["parameters"] == "final_layer"
    update.check_compatible(model, require_all=False)
    assert update.final_layer_gradients(model)[1] is None
    with pytest.raises(ValueError, match="need a model with `features`"):
        final_layer_client_gradients(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), x, y)
    with pytest.raises(ValueError, match="parameters must be one of"):
        client_update(model, x, y, parameters="head")


def test_labels_outside_the_models_classes_are_refused_before_any_gradient():
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=8, seed=0)
    images = torch.rand(2, 1, 6, 6)
    for labels, shown in ((torch.tensor([1, 4]), 4), (torch.tensor([-1, 2]), -1)):
        with pytest.raises(
            ValueError, match=f"the model has 4 classes but the batch has label {shown}: labels must be 0..3"
        ):
            client_update(model, images, labels)
