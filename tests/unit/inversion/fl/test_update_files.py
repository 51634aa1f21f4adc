"""The threat model in the types: public SharedUpdate files, private PrivateBatch files, checksums, digests."""

import dataclasses
import json
import pickle
from unittest import mock

import pytest
import torch

import inversion as gl
from inversion import model_from_update
from inversion.attack import plan_labels
from inversion.data.specs import SPECS
from inversion.fl import PrivateBatch, SharedUpdate, UpdateMeta, client_update
from inversion.fl._records import content_digest, save_record
from inversion.fl.update import FORMAT, VERSION
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
    public_fields = {f.name for f in dataclasses.fields(SharedUpdate)} | {
        f.name for f in dataclasses.fields(UpdateMeta)
    }
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
    _, _, private = make_pair()
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
    _, _, private = make_pair()
    with pytest.raises(ValueError, match="is not a gradleak.SharedUpdate file"):
        SharedUpdate.load(private.save(tmp_path / "private.pt"))  # a private file is not an update
    with pytest.raises(FileNotFoundError):
        SharedUpdate.load(tmp_path / "absent.pt")


def test_gradients_captured_elsewhere():
    model = small_model()
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    update = SharedUpdate.from_gradients(grads, batch_size=3, model=model, dataset="cifar10")
    update.check_compatible(model)
    assert update.meta.model == model.config and update.meta.input_shape == (3, 16, 16)  # the model's, not cifar10's
    model_from_update(update)  # the update fits the model it names
    assert SharedUpdate.from_gradients(grads, 3, dataset="cifar10").meta.input_shape == (3, 32, 32)  # no model
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
    _, update, _ = make_pair()
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


# ---- malformed, partial, CUDA-saved and cut files: one-line ValueErrors naming the file ----

SPEC = {"name": "fcn", "num_classes": 3, "in_channels": 1, "image_size": [4, 4], "width": 5}
HEADER = {"kind": "fedsgd", "batch_size": 2, "meta": {}}
BIAS = {"fc.bias": torch.zeros(3)}


def write_payload(path, header=HEADER, tensors=BIAS, *, header_json=None, sha256=None, drop=()):
    """An update file built by hand; its checksum is correct whenever it can be computed."""
    header_json = json.dumps(header) if header_json is None else header_json
    if sha256 is None:
        sha256 = content_digest(json.loads(header_json), tensors)
    payload = {"format": FORMAT, "version": VERSION, "header_json": header_json, "tensors": tensors, "sha256": sha256}
    torch.save({k: v for k, v in payload.items() if k not in drop}, path)
    return path


def one_line_error(call, path, match):
    """Run ``call``; it must raise a one-line ValueError that names ``path`` and matches ``match``."""
    with pytest.raises(ValueError, match=match) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"header_json": "{not json", "sha256": "0"}, "its header is not JSON"),
        ({"header_json": 5, "sha256": "0"}, "its header is not JSON"),
        ({"header": [1, 2]}, "its header is not a JSON object"),
        ({"tensors": [torch.zeros(1)], "sha256": "0"}, "its tensors are a list, not a dict"),
        ({"tensors": {"fc.bias": [1.0, 2.0]}, "sha256": "0"}, "'fc.bias' is a list, not a dense tensor"),
        ({"tensors": {"fc.bias": torch.zeros(3).to_sparse()}, "sha256": "0"}, "'fc.bias' is a sparse_coo tensor"),
        ({"tensors": {1: torch.zeros(1), "a": torch.zeros(1)}, "sha256": "0"}, "tensor name 1 is not a string"),
        ({"drop": ("sha256",)}, "it has no 'sha256' entry"),
        ({"header": {"kind": "fedsgd", "meta": {}}}, "its header has no 'batch_size'"),
        ({"header": {**HEADER, "batch_size": "abc"}}, "batch_size must be a positive integer"),
        ({"header": {**HEADER, "meta": [1]}}, "metadata must be a JSON object, got a list"),
        ({"header": {**HEADER, "meta": {"model_sha256": 5}}}, "model_sha256 must be a str or None, got 5"),
        ({"header": {**HEADER, "meta": {"weights": 5}}}, "weights must be a str or None, got 5"),
        ({"header": {**HEADER, "meta": {"input_shape": 5}}}, "input_shape must be a list of ints, got 5"),
        ({"header": {**HEADER, "meta": {"mean": "ab", "std": "ab"}}}, "mean must be a list of floats"),
        ({"header": {**HEADER, "meta": {"notes": [1]}}}, "notes must be a Mapping"),
        ({"tensors": {"fc.bias": None}}, "'fc.bias' is a NoneType, expected a torch.Tensor"),
    ],
)
def test_malformed_update_files_are_explained(tmp_path, payload, match):
    path = write_payload(tmp_path / "bad.pt", **payload)
    one_line_error(lambda: SharedUpdate.load(path), path, match)


def test_an_update_that_does_not_fit_its_model_names_its_file(tmp_path):
    wrong = write_payload(tmp_path / "wrong.pt", {**HEADER, "meta": {"model": SPEC}}, {"fc.bias": torch.zeros(7)})
    one_line_error(lambda: model_from_update(SharedUpdate.load(wrong)), wrong, r"'fc.bias' of .* has shape \(7,\)")
    unknown = write_payload(tmp_path / "unknown.pt", {**HEADER, "meta": {"model": {**SPEC, "name": "nope"}}})
    one_line_error(lambda: model_from_update(SharedUpdate.load(unknown)), unknown, "cannot be built: unknown model")
    extra = write_payload(tmp_path / "extra.pt", {**HEADER, "meta": {"model": {**SPEC, "colour": 1}}})
    one_line_error(lambda: model_from_update(SharedUpdate.load(extra)), extra, "cannot be built: .*colour")


def test_label_restoration_needs_the_final_layers_gradients(tmp_path):
    model, update, _ = make_pair()
    convs = {n: g for n, g in update.gradients.items() if not n.startswith("fc.")}
    path = dataclasses.replace(update, gradients=convs).save(tmp_path / "convs.pt")
    loaded = SharedUpdate.load(path)
    match = r"no gradient for 'fc.weight', the final layer's weight: label restoration needs it.*labels=joint"
    one_line_error(lambda: loaded.final_layer_gradients(model), path, match)
    one_line_error(lambda: plan_labels("ilrg", loaded, model), path, match)
    assert plan_labels("joint", loaded, model).learnable  # label modes that do not restore still work
    no_bias = dataclasses.replace(update, gradients={"fc.weight": update.gradients["fc.weight"]})
    with pytest.raises(ValueError, match="no gradient for 'fc.bias', the final layer's bias"):
        no_bias.final_layer_gradients(model)


def saved_as_if_on_cuda(save):
    """Run ``save`` with every storage tagged ``cuda:0``, as torch.save on a GPU writes it."""
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        return save()


def test_files_saved_from_cuda_load_on_the_cpu(tmp_path):
    model, update, private = make_pair()
    update_path = saved_as_if_on_cuda(lambda: update.save(tmp_path / "update.pt"))
    private_path = saved_as_if_on_cuda(lambda: private.save(tmp_path / "private.pt"))
    if not torch.cuda.is_available():  # the files really name a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(update_path, weights_only=True)
    loaded = SharedUpdate.load(update_path)
    assert loaded.sha256 == update.sha256 and all(g.device.type == "cpu" for g in loaded.gradients.values())
    assert PrivateBatch.load(private_path).images.device.type == "cpu"
    weights = tmp_path / "weights.pt"
    saved_as_if_on_cuda(lambda: torch.save(model.state_dict(), weights))
    assert model_from_update(update, weights=weights).fc.weight.device.type == "cpu"


def test_only_unreadable_files_are_called_truncated_or_corrupt(tmp_path, monkeypatch):
    _, update, _ = make_pair()
    data = update.save(tmp_path / "u.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: SharedUpdate.load(tmp_path / "cut.pt"), tmp_path / "cut.pt", "truncated or corrupt")
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(lambda: SharedUpdate.load(tmp_path / "empty.pt"), tmp_path / "empty.pt", "truncated or corrupt")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    path = tmp_path / "u.pt"
    message = one_line_error(lambda: SharedUpdate.load(path), path, "cannot read .*Permission denied")
    assert "corrupt" not in message


def test_non_finite_weights_are_blamed_on_the_weights_file(tmp_path):
    model, update, _ = make_pair()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    state["fc.bias"][1] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    one_line_error(
        lambda: model_from_update(update, weights=tmp_path / "nan.pt"),
        tmp_path / "nan.pt",
        "non-finite values .* in 'fc.bias'",
    )


# ---- inputs that cannot be right: refused where they enter, in one line naming the cause ----


def test_a_private_batch_tied_to_no_update_is_never_scored(tmp_path):
    _, update, private = make_pair()
    unlinked = PrivateBatch.load(PrivateBatch(private.images, private.labels, private.record).save(tmp_path / "p.pt"))
    assert unlinked.update_sha256 is None
    with pytest.raises(ValueError, match="tied to no update"):
        unlinked.check_matches(update)
    with pytest.raises(ValueError, match="tied to no update"):
        unlinked.check_link(update.sha256)
    private.check_matches(update)  # the linked file still scores
    # a file written without the link entry at all (not by PrivateBatch.save) says so, in one line
    save_record(
        tmp_path / "bare.pt",
        "gradleak.PrivateBatch",
        1,
        {"record": {}},
        {"images": private.images, "labels": private.labels},
    )
    with pytest.raises(ValueError, match=r"bare\.pt holds an invalid private batch: it has no 'update_sha256' entry"):
        PrivateBatch.load(tmp_path / "bare.pt")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.bfloat16, torch.bool])
def test_gradients_that_are_not_float32_or_float64_are_refused(dtype):
    grads = {n: g.to(dtype) for n, g in make_pair()[1].gradients.items()}
    with pytest.raises(ValueError, match=f"has dtype {dtype}, expected float32 or float64"):
        SharedUpdate.from_gradients(grads, 6)
    assert SharedUpdate.from_gradients({n: g.double() for n, g in grads.items()}, 6).batch_size == 6


def test_an_unknown_dataset_name_needs_its_normalisation(tmp_path):
    grads = make_pair()[1].gradients
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar-100' .*mnist, cifar100, cifar10, or give mean="):
        SharedUpdate.from_gradients(grads, 6, dataset="cifar-100")
    own = SharedUpdate.from_gradients(grads, 6, dataset="mine", mean=(0.5,), std=(0.25,))
    assert own.meta.mean == (0.5,) and own.meta.input_shape is None
    assert SharedUpdate.from_gradients(grads, 6, dataset="cifar100").meta.mean == SPECS["cifar100"].mean
    path = write_payload(tmp_path / "u.pt", {**HEADER, "meta": {"dataset": "cifar-100"}})
    one_line_error(lambda: SharedUpdate.load(path), path, "unknown dataset 'cifar-100'")


def test_normalisation_and_input_shape_must_fit_each_other_and_the_model(tmp_path):
    model, update, _ = make_pair()  # convnet for (3, 16, 16)
    with pytest.raises(ValueError, match=r"mean and std have 3 value\(s\) but the inputs \(1, 16, 16\) have 1"):
        dataclasses.replace(update.meta, input_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="input_shape must be \\(C, H, W\\)"):
        UpdateMeta(input_shape=(16, 16))
    for meta, match in [
        ({"input_shape": (3, 8, 8)}, r"is for inputs \(3, 8, 8\) .* the model takes \(3, 16, 16\)"),
        ({"input_shape": None, "mean": (0.5,), "std": (0.5,)}, "normalises 1 channel.* model takes 3"),
    ]:
        shifted = dataclasses.replace(update, meta=dataclasses.replace(update.meta, **meta))
        path = shifted.save(tmp_path / "shifted.pt")
        one_line_error(lambda path=path: model_from_update(SharedUpdate.load(path)), path, match)
        with pytest.raises(ValueError, match=match):
            gl.invert(shifted, model, labels="joint", max_steps=1, progress=False)


def test_the_api_normalises_as_the_updates_dataset_before_the_presets():
    model, update, _ = make_pair()  # 3 x 16 x 16 inputs; the default preset is for MNIST (one channel)
    named = dataclasses.replace(update, meta=UpdateMeta(dataset="cifar10", input_shape=(3, 16, 16)))
    result = gl.invert(named, model, labels="joint", max_steps=1, progress=False)
    assert result.meta.mean == SPECS["cifar10"].mean and result.meta.std == SPECS["cifar10"].std
    unnamed = dataclasses.replace(update, meta=UpdateMeta(input_shape=(3, 16, 16)))
    with pytest.raises(ValueError, match="no normalisation and that of mnist \\(preset default\\) does not fit it"):
        gl.invert(unnamed, model, labels="joint", max_steps=1, progress=False)
