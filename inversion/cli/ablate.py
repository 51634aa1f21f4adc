"""Known-versus-unknown-label ablation: the same shared updates through every label mode.

    python scripts/ablate.py [--config configs/ablate/cpu.yaml] [--executor {in-process,ray}] [--address ADDR]
                             [--num-cpus N] [--gpus-per-run G] [--cpus-per-run N] [key=value ...]

Profiles: configs/ablate/cpu.yaml (this CPU, well under 20 minutes) and configs/ablate/paper.yaml (the
paper's settings, for a GPU). Writes into ``out``: ablation.csv (one row per run), ablation.md (mean ± std
per dataset x mode, paired gain over the baseline and gap to oracle, in dB), ablation.png, runs.jsonl (the
ledger: re-running skips finished runs, so an interrupted sweep resumes) and runs/<key>/ for each run.
``--executor ray`` runs one Ray task per run (a local Ray of ``--num-cpus`` CPUs, or the cluster at
``--address``); the results are the same.
"""

from inversion.cli import config_parser, run_cli
from inversion.config import AblateConfig, load_config
from inversion.experiments.ablate import run_ablation
from inversion.sweep.options import add_executor_options, executor_from_args, report


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/ablate/cpu.yaml")
    add_executor_options(parser)
    args = parser.parse_intermixed_args()
    executor = executor_from_args(args)
    done = run_ablation(load_config(AblateConfig, args.config, args.overrides), executor=executor)
    report(done, "ablation.md", "ablation.csv, ablation.md, ablation.png, runs.jsonl")


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
