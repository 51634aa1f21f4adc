"""Run a real Flower federation (FedSGD under FedAvg) whose honest-but-curious server captures every update.

    python scripts/federate.py [--config configs/federate/default.yaml] [key=value | group=name ...]

N simulated clients (Flower's simulation engine, Ray backend, CPU) hold disjoint partitions of real
images; each round every client takes one SGD step on K images of its own and the server averages
the new weights with a stock FedAvg. The server recovers each client's gradient (w - w') / lr and
keeps it. Writes into ``out`` (default runs/federate): ``captured/round_RRR/client_P.pt`` (what the
server saw: SharedUpdate files) and ``captured/round_RRR/global_model.pt`` (the model they belong
to), ``private/round_RRR/client_P.pt`` (the clients' batches, for scoring only), ``federation.json``
(config, timings, files and sha256s) and ``config.yaml``. ``client.dp_noise_multiplier=σ`` makes the
clients run DP-SGD (Opacus; ``client.dp_max_grad_norm`` C, ``client.dp_delta`` δ); ``federation.json`` records
σ, C, δ and ε. Needs ``pip install 'flwr[simulation]'`` (and ``opacus`` for DP-SGD).
"""

from inversion.cli import config_parser, run_cli
from inversion.config import FederateConfig, load_config
from inversion.experiments.federate import run_federation


def main() -> None:
    args = config_parser(__doc__.splitlines()[0], "configs/federate/default.yaml").parse_intermixed_args()
    cfg = load_config(FederateConfig, args.config, args.overrides)
    run = run_federation(cfg)
    fed = cfg.federation
    updates = run.updates
    print(
        f"federation: {fed.clients} clients, {fed.rounds} rounds of FedSGD (lr {fed.lr}, K={cfg.client.batch_size}) "
        f"on {run.data_source}"
    )
    print(
        f"captured {len(updates)} client updates (what the server saw) under {run.out / 'captured'}; "
        f"private batches (scoring only) under {run.out / 'private'}; summary {run.summary_path}"
    )
    if run.dp is not None:
        per_update, all_rounds = (
            "inf (no noise)" if run.dp[key] is None else f"{run.dp[key]:.3g}"
            for key in ("epsilon", "epsilon_all_rounds")
        )
        print(
            f"DP-SGD (sigma {run.dp['noise_multiplier']}, C {run.dp['max_grad_norm']}, delta {run.dp['delta']}): "
            f"epsilon {per_update} per update, {all_rounds} for a client in all {fed.rounds} rounds"
        )
    print(f"took {run.seconds:.1f} s ({run.simulation_seconds:.1f} s in the Flower simulation, Ray start included)")
    first = run.rounds[0]["clients"][0]
    print(
        f"attack one: python scripts/invert.py --update {run.out / first['update']} "
        f"--private {run.out / first['private']}"
    )


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
