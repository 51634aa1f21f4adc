"""The threat model in the types: public SharedUpdate files, private PrivateBatch files, checksums, digests."""
import dataclasses
import pickle

import pytest
import torch

from inversion import model_from_update
from inversion.fl import PrivateBatch, SharedUpdate, UpdateMeta, client_update
from inversion.fl.update import FORMAT
from inversion.models import build_model


def small_model(seed=3):
    return build_model("convnet", num_classes=5, in_channels=3, image_size=(16, 16), width=4, seed=seed)


def make_pair():
    model = small_model()
    x, y = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 4, 4, 4])
    update = client_update(model, x, y, dataset="cifar10", notes={"note": "test"})
    return model, update, PrivateBatch(x, y, {"sampler": "counts"}, update.sha256)


def test_update_and_private_batch_round_trip_apart(tmp_path):
    model, update, private = make_pair()
    update_path = update.save(tmp_path / "sub" / "update.pt")
    private_path = private.save(tmp_path / "sub" / "private.pt")
    assert sorted(p.name for p in update_path.parent.iterdir()) == ["private.pt", "update.pt"]  # no temp files left
    loaded = SharedUpdate.load(update_path)
    assert loaded.batch_size == 6 and loaded.kind == "fedsgd" and loaded.origin == update_path
    assert loaded.meta == update.meta and loaded.sha256 == update.sha256
    assert loaded.meta.notes == {"note": "test", "parameters": "all"}
    assert loaded.meta.input_shape == (3, 16, 16) and loaded.meta.dataset == "cifar10"
    assert loaded.meta.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    for name, grad in update.gradients.items():
        assert torch.equal(loaded.gradients[name], grad)
    # nothing private is in the public object or its file
    public_fields = {f.name for f in dataclasses.fields(SharedUpdate)} | {f.name for f in dataclasses.fields(UpdateMeta)}
    assert not public_fields & {"truth", "images", "labels", "record", "seed", "sampler"}
    payload = torch.load(update_path, weights_only=True)
    assert set(payload["tensors"]) == set(update.gradients)
    assert "counts" not in payload["header_json"] and "sampler" not in payload["header_json"]
    back = PrivateBatch.load(private_path)
    assert torch.equal(back.images, private.images) and back.labels.tolist() == [0, 1, 1, 4, 4, 4]
    assert back.record == {"sampler": "counts"} and back.update_sha256 == update.sha256
    back.check_matches(loaded)
    # the server rebuilds the exact model from the public metadata (spec + state digest)
    rebuilt = model_from_update(loaded)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    _, update, private = make_pair()
    for obj, name in ((update, "update.pt"), (private, "private.pt")):
        path = obj.save(tmp_path / name)
        data = bytearray(path.read_bytes())
        tensor = obj.gradients["fc.weight"] if obj is update else obj.images
        at = bytes(data).find(tensor.contiguous().numpy().tobytes()[:64])
        assert at > 0
        data[at + 5] ^= 0x01  # one bit of one float of the tensor data
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="fails its checksum"):
            type(obj).load(path)


def test_private_batch_is_never_scored_against_another_update():
    _, update, private = make_pair()
    other = client_update(small_model(seed=4), private.images, private.labels)
    with pytest.raises(ValueError, match="belongs to another update"):
        private.check_matches(other)
    with pytest.raises(ValueError, match="must agree"):
        PrivateBatch(private.images, private.labels[:2])


class Payload:
    """An arbitrary object: unpickling such things can run code, so loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_payload_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 2, "tensors": {}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match="refused"):
        SharedUpdate.load(path)
    assert "must never run" not in capsys.readouterr().out
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"format": FORMAT}, f)
    with pytest.raises(ValueError):
        SharedUpdate.load(tmp_path / "plain.pkl")


def test_bad_files_are_explained(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a gradleak.SharedUpdate file"):
        SharedUpdate.load(tmp_path / "other.pt")
    _, update, private = make_pair()
    with pytest.raises(ValueError, match="is not a gradleak.SharedUpdate file"):
        SharedUpdate.load(private.save(tmp_path / "private.pt"))  # a private file is not an update
    data = update.save(tmp_path / "u.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SharedUpdate.load(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        SharedUpdate.load(tmp_path / "absent.pt")


def test_gradients_captured_elsewhere():
    model = small_model()
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    update = SharedUpdate.from_gradients(grads, batch_size=3, model=model, dataset="cifar10")
    update.check_compatible(model)
    assert update.meta.model == model.config and update.meta.input_shape == (3, 32, 32)  # the dataset's shape
    hidden = SharedUpdate.from_gradients(grads, batch_size=None)  # a protocol that does not reveal K
    assert hidden.batch_size is None and hidden.meta == UpdateMeta()
    partial = SharedUpdate.from_gradients([("fc.weight", grads["fc.weight"]), ("fc.bias", grads["fc.bias"])], 3)
    with pytest.raises(ValueError, match="lacks gradients"):
        partial.check_compatible(model)
    partial.check_compatible(model, require_all=False)
    with pytest.raises(ValueError, match="has shape"):
        SharedUpdate.from_gradients({"fc.bias": torch.zeros(7)}, 3).check_compatible(model, require_all=False)
    with pytest.raises(ValueError, match="non-finite"):
        SharedUpdate.from_gradients({"fc.bias": torch.tensor([float("nan")])}, 3)
    for bad in (0, 2.7, True, "8"):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            SharedUpdate.from_gradients(grads, bad)


def test_the_server_refuses_a_model_in_another_state(tmp_path):
    model, update, _ = make_pair()
    trained = small_model()
    with torch.no_grad():
        trained.fc.bias.add_(0.5)
    weights = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), weights)
    with pytest.raises(ValueError, match="not the one the update was computed on"):
        model_from_update(update, weights=weights)
    described = client_update(trained, torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]))
    relinked = dataclasses.replace(described, meta=dataclasses.replace(described.meta, weights="trained.pt"))
    loaded = SharedUpdate.load(relinked.save(tmp_path / "u.pt"))
    assert torch.equal(model_from_update(loaded).fc.bias, trained.fc.bias)  # meta.weights, relative to the file
