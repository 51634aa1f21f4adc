"""Capture in anyone's Flower app: a two-client federation written like Flower's quickstart-pytorch (its ``Net``,
``train()`` with SGD momentum 0.9 over a shuffled ``DataLoader``, standard reply metrics), whose server only wraps
its stock FedAvg in ``CapturingStrategy``. What is captured is checked against what the server really got, and
attacked; protocol mismatches are one-line errors.

The federation starts Ray (about 15 s on 2 CPU cores); the error tests drive the strategy's hooks directly.
"""

import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

flower = pytest.importorskip("inversion.fl.flower")

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

import inversion  # noqa: E402
from inversion.fl import PrivateBatch, SharedUpdate  # noqa: E402
from inversion.fl._records import model_digest  # noqa: E402
from inversion.fl.local import LocalTraining  # noqa: E402
from inversion.models import load_weights  # noqa: E402
from inversion.restore import restore_from_update  # noqa: E402

pytestmark = pytest.mark.flower
K, BATCH, LOCAL_EPOCHS, LR, ROUNDS = 8, 8, 2, 0.01, 2
"""Each client's K samples, its DataLoader's batch size, local epochs, the server's lr, and the rounds."""
LABELS = {0: [0, 0, 1, 1, 2, 2, 3, 3], 1: [5, 5, 6, 6, 6, 7, 8, 9]}
"""Each partition's labels: their counts tell the two clients' updates apart (the replies do not say which is which)."""
PROTOCOL = flower.FederationProtocol("fedavg", epochs=LOCAL_EPOCHS, batch_size=BATCH, momentum=0.9, shuffle=True)


# ---- a Flower app written like quickstart-pytorch (task.py and client_app.py), on synthetic 1x12x12 images ----


class Net(nn.Module):
    """The quickstart's model, shrunk: a 2-layer MLP on 1x12x12 inputs, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(144, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load_data(partition_id: int) -> DataLoader:
    """The partition's K images in [0, 1], normalised as the quickstart does (``Normalize(0.5, 0.5)``)."""
    images = torch.rand(K, 1, 12, 12, generator=torch.Generator().manual_seed(partition_id))
    dataset = TensorDataset((images - 0.5) / 0.5, torch.tensor(LABELS[partition_id]))
    return DataLoader(dataset, batch_size=BATCH, shuffle=True)


def train_fn(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float) -> float:
    """The quickstart's ``train()``."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader = load_data(int(context.node_config["partition-id"]))
    train_loss = train_fn(model, trainloader, LOCAL_EPOCHS, msg.content["config"]["lr"])
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


class RecordingFedAvg(FedAvg):
    """Stock FedAvg that also keeps the raw replies it aggregates: the test's own view of what the server got."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.replies: list[tuple[int, int, dict, dict]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        for m in replies:
            arrays = m.content["arrays"].to_torch_state_dict()
            self.replies.append((server_round, m.metadata.src_node_id, arrays, dict(m.content["metrics"])))
        return super().aggregate_train(server_round, replies)


def quickstart_server_app(global_model: Net, strategy: FedAvg, captured, kept: dict) -> ServerApp:
    """The quickstart's server_app.py, plus the capture (the lines marked +)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        arrays = ArrayRecord(global_model.state_dict())
        protocol = flower.FederationProtocol(  # +
            "fedavg",
            epochs=LOCAL_EPOCHS,
            batch_size=BATCH,
            momentum=0.9,
            shuffle=True,  # +
        )  # +
        strategy_ = flower.CapturingStrategy(  # +
            strategy,
            global_model,
            protocol,
            captured,
            input_shape=(1, 12, 12),
            mean=(0.5,),
            std=(0.5,),  # +
        )  # +
        kept["strategy"] = strategy_  # (for the test only)
        strategy_.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": LR}), num_rounds=ROUNDS)

    return app


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    pytest.importorskip("flwr.simulation")
    ray = pytest.importorskip("ray")
    from flwr.simulation import run_simulation

    captured = tmp_path_factory.mktemp("flower") / "captured"
    torch.manual_seed(0)
    global_model, kept = Net(), {}
    initial = {name: value.clone() for name, value in global_model.state_dict().items()}
    fedavg = RecordingFedAvg(fraction_evaluate=0.0)  # the quickstart's FedAvg, without client-side evaluation
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # Ray's workers cannot import this test module: send its code
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", category=FutureWarning)
            run_simulation(
                server_app=quickstart_server_app(global_model, fedavg, captured, kept),
                client_app=client_app,
                num_supernodes=2,
                backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
            )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
        if ray.is_initialized():
            ray.shutdown()
    assert len(kept["strategy"].rounds) == ROUNDS, "the federation did not finish (see Flower's log)"
    return captured, initial, fedavg.replies, kept["strategy"]


def _global(captured, server_round: int) -> Net:
    return load_weights(Net(), flower.round_dir(captured, server_round) / flower.GLOBAL_MODEL)


@pytest.mark.ray
def test_each_reply_is_captured_as_the_exact_weight_delta_with_the_public_facts(federation):
    captured, initial, replies, strategy = federation
    assert len(replies) == 2 * ROUNDS
    first = _global(captured, 1)
    assert all(torch.equal(first.state_dict()[n], initial[n]) for n in initial)  # what the server sent in round 1
    round_one = [after for r, _, after, _ in replies if r == 1]  # round 2 sends FedAvg of round 1 (equal K)
    for name, value in _global(captured, 2).state_dict().items():
        torch.testing.assert_close(value, (round_one[0][name] + round_one[1][name]) / 2)
    for server_round, node_id, after, metrics in replies:
        path = flower.round_dir(captured, server_round) / f"node_{node_id}.pt"  # no partition-id: the node names it
        update = SharedUpdate.load(path)
        model = _global(captured, server_round)
        before = model.state_dict()
        assert update.kind == "fedavg" and update.batch_size == K == metrics["num-examples"]
        assert update.meta.local == LocalTraining.from_epochs(LOCAL_EPOCHS, BATCH, LR, K, momentum=0.9, shuffle=True)
        assert update.meta.weights == "global_model.pt" and update.meta.model_sha256 == model_digest(model)
        assert update.meta.input_shape == (1, 12, 12) and update.meta.mean == (0.5,)  # a Net does not say: the operator
        assert update.meta.notes == {
            "round": server_round,
            "node_id": node_id,
            "lr": LR,
            "train_config": {"lr": LR, "server-round": server_round},
            "metrics": metrics,
            "protocol": PROTOCOL.to_json(),
        }
        assert set(update.gradients) == {n for n, _ in model.named_parameters()}
        for name, delta in update.gradients.items():
            assert torch.equal(delta, after[name] - before[name]), name  # Δ = w' - w, bit for bit
        assert min(float(d.abs().max()) for d in update.gradients.values()) > 1e-4  # every layer moved
    clients = [c for r in strategy.rounds for c in r["clients"]]
    assert {(c["node_id"], c["partition_id"]) for c in clients} == {(n, None) for _, n, _, _ in replies}
    assert all(r["failed"] == [] and r["lr"] == LR for r in strategy.rounds)


@pytest.mark.ray
def test_ilrg_restores_each_clients_label_counts_from_its_captured_update(federation):
    captured, _, replies, _ = federation
    found = []
    for node_id in sorted({n for r, n, _, _ in replies if r == 1}):
        update = SharedUpdate.load(flower.round_dir(captured, 1) / f"node_{node_id}.pt")
        found.append(tuple(restore_from_update("ilrg", update, _global(captured, 1)).counts.tolist()))
    true = [tuple(torch.bincount(torch.tensor(labels), minlength=10).tolist()) for labels in LABELS.values()]
    assert sorted(found) == sorted(true)


@pytest.mark.ray
def test_the_attack_reconstructs_a_clients_images_from_its_captured_update(federation):
    """200 steps of the public API's attack on one captured update, with iLRG's labels. The client's images are
    uniform noise in [0, 1]: their mean image scores 10.8 dB (MSE 1/12); the attack must do far better."""
    captured, _, replies, _ = federation
    node_id = min(n for r, n, _, _ in replies if r == 1)
    update = inversion.load_update(flower.round_dir(captured, 1) / f"node_{node_id}.pt")
    model = _global(captured, 1)
    result = inversion.invert(update, model, labels="ilrg", max_steps=200, progress=False, device="cpu")
    counts = torch.bincount(result.labels, minlength=10)
    partition = next(
        p for p, labels in LABELS.items() if torch.equal(torch.bincount(torch.tensor(labels), minlength=10), counts)
    )
    images, labels = load_data(partition).dataset.tensors  # the client's private batch, for scoring only
    scores = inversion.score(result, PrivateBatch(images, labels, {}, update.sha256), lpips=False)
    assert scores["labels"]["LnAcc"] == 1.0 and scores["mean"]["psnr"] > 25.0, scores["mean"]
    print(f"attack on a captured quickstart-style update: {scores['mean']['psnr']:.2f} dB after 200 steps")


# ---- protocol mismatches, with the strategy's hooks driven directly (no Ray) ----

NODES = (11, 22)


def _metadata(src: int, dst: int) -> Metadata:
    """A message's metadata as the SuperLink sets it (no Flower run in this process to set it)."""
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )


class _Sender(FedAvg):
    """Stock FedAvg's train messages to two nodes (without the Flower run that samples and addresses them)."""

    def configure_train(self, server_round, arrays, config, grid):
        config["server-round"] = server_round
        content = RecordDict({"arrays": arrays, "config": config})
        return [Message(content=content, metadata=_metadata(0, node)) for node in NODES]


def _round(tmp_path, protocol, train_config, reply):
    """Round 1 through a CapturingStrategy: sends ``train_config``; each node replies ``reply(state)``'s
    (arrays, metrics)."""
    torch.manual_seed(0)
    net = Net()
    strategy = flower.CapturingStrategy(
        _Sender(), net, protocol, tmp_path / "captured", input_shape=(1, 12, 12), mean=(0.5,), std=(0.5,)
    )
    sent = strategy.configure_train(1, ArrayRecord(net.state_dict()), ConfigRecord(train_config), grid=None)
    replies = []
    for message in sent:
        arrays, metrics = reply(net.state_dict())
        content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
        replies.append(Message(content=content, metadata=_metadata(message.metadata.dst_node_id, 0)))
    return strategy.aggregate_train(1, replies), strategy


def _one_line_error(call, match: str) -> str:
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def _moved(state):
    """A reply of a client that trained: every weight moved down a little."""
    return {name: value - 1e-3 for name, value in state.items()}, {"num-examples": K}


def test_an_honest_round_through_the_hooks_is_captured(tmp_path):
    (arrays, _), strategy = _round(tmp_path, PROTOCOL, {"lr": LR}, _moved)
    assert arrays is not None and len(strategy.rounds[0]["clients"]) == 2
    update = SharedUpdate.load(tmp_path / "captured" / "round_001" / f"node_{NODES[0]}.pt")
    assert update.meta.notes["train_config"] == {"lr": LR, "server-round": 1}
    torch.testing.assert_close(update.gradients["fc1.bias"], torch.full((32,), -1e-3), rtol=0, atol=2**-20)


def test_a_failed_reply_is_noted_and_left_to_the_strategy(tmp_path):
    """A client that fails is no protocol mismatch: its error is recorded and FedAvg aggregates the others."""
    torch.manual_seed(0)
    net = Net()
    strategy = flower.CapturingStrategy(
        _Sender(), net, PROTOCOL, tmp_path, input_shape=(1, 12, 12), mean=(0.5,), std=(0.5,)
    )
    strategy.configure_train(1, ArrayRecord(net.state_dict()), ConfigRecord({"lr": LR}), grid=None)
    arrays, metrics = _moved(net.state_dict())
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    replies = [
        Message(content=content, metadata=_metadata(NODES[0], 0)),
        Message(error=Error(1, "ClientAppException: Message: out of memory"), metadata=_metadata(NODES[1], 0)),
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert torch.equal(aggregated.to_torch_state_dict()["fc2.bias"], arrays["fc2.bias"])  # the one good reply
    (record,) = strategy.rounds
    assert record["failed"] == [{"node_id": NODES[1], "reason": "out of memory"}]
    assert [c["node_id"] for c in record["clients"]] == [NODES[0]]


def test_a_train_config_lr_that_contradicts_the_protocol_is_refused_before_any_client_trains(tmp_path):
    protocol = flower.FederationProtocol("fedsgd", lr=0.1)
    message = _one_line_error(lambda: _round(tmp_path, protocol, {"lr": 0.5}, _moved), r"lr=0\.5 .* lr=0\.1")
    assert "declare what the clients run" in message
    assert not (tmp_path / "captured").exists()  # nothing sent, nothing saved


def test_a_reply_without_num_examples_is_refused(tmp_path):
    def reply(state):
        return _moved(state)[0], {"train_loss": 1.0}

    message = _one_line_error(lambda: _round(tmp_path, PROTOCOL, {"lr": LR}, reply), "has no 'num-examples' metric")
    assert message.startswith(f"node {NODES[0]}'s reply in round 1")


def test_reply_arrays_that_do_not_fit_the_model_are_refused(tmp_path):
    def wrong_shape(state):
        arrays, metrics = _moved(state)
        return {**arrays, "fc2.bias": torch.zeros(9)}, metrics

    def other_names(state):
        arrays, metrics = _moved(state)
        return {f"model.{n}": v for n, v in arrays.items()}, metrics

    _one_line_error(lambda: _round(tmp_path, PROTOCOL, {"lr": LR}, wrong_shape), r"'fc2.bias' of shape \(9,\)")
    _one_line_error(lambda: _round(tmp_path, PROTOCOL, {"lr": LR}, other_names), "does not hold the model's arrays")


def test_a_delta_with_the_sign_of_a_gradient_is_refused(tmp_path):
    """w' = w + η g (a client that climbed its loss, or sent w - w'): at most K bias entries may grow."""

    def climbed(state):
        return {n: v + 1e-3 for n, v in state.items()}, {"num-examples": 2}

    _one_line_error(
        lambda: _round(tmp_path, PROTOCOL, {"lr": LR}, climbed), r"^node 11's reply .* bias changes are positive"
    )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"kind": "fedavg", "epochs": 1}, "needs the clients' batch_size and either epochs or steps"),
        ({"kind": "fedavg", "epochs": 1, "steps": 2, "batch_size": 4}, "either epochs or steps"),
        ({"kind": "fedsgd", "momentum": 0.9}, "momentum describe local training"),
        ({"kind": "fedavg", "steps": 1, "batch_size": 4, "momentum": 1.5}, "momentum must be a number in"),
        ({"kind": "fedprox"}, "kind must be one of"),
    ],
)
def test_an_impossible_protocol_is_refused_when_declared(options, match):
    _one_line_error(lambda: flower.FederationProtocol(**options), match)


def test_without_a_declared_lr_each_round_takes_the_train_configs():
    protocol = flower.FederationProtocol("fedsgd")
    assert protocol.round_lr({"lr": 0.25, "server-round": 3}) == 0.25
    _one_line_error(lambda: protocol.round_lr({}), "no learning rate")
    assert flower.FederationProtocol("fedsgd", lr=0.1).round_lr({"server-round": 1}) == 0.1
