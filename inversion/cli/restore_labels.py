"""Benchmark instance-wise label restoration (iLRG and baselines) over a sweep of settings.

    python scripts/restore_labels.py [--config configs/restore_labels/NAME.yaml] [--json] [--executor {in-process,ray}]
                                     [--address ADDR] [--num-cpus N] [--gpus-per-run G] [--cpus-per-run N]
                                     [key=value | group=name ...]

For T trials per setting (each a new client batch and, unless restore.fixed_model, a new
untrained model) it restores the label counts from the shared update with every method,
prints a table of LeAcc / LnAcc / IRec (mean ± std) and restoration time, and writes
``results.json`` and ``results.md`` into ``out``, rebuilt from the ledger ``runs.jsonl``:
re-running skips the finished settings (an interrupted sweep resumes) and retries failed ones.
``--json`` also prints the JSON to stdout (the table then goes to stderr). ``--executor ray``
runs one Ray task per setting (a local Ray of ``--num-cpus`` CPUs, or the cluster at ``--address``).
"""

import json
import sys
from pathlib import Path

from inversion.cli import config_parser, run_cli
from inversion.experiments.restore_labels import format_markdown, run_sweep
from inversion.sweep.options import add_executor_options, executor_from_args


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/restore_labels/default.yaml")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON on stdout")
    add_executor_options(parser)
    args = parser.parse_intermixed_args()
    finished: list[dict] = []
    results = run_sweep(args.config, args.overrides, executor=executor_from_args(args), on_setting=finished.append)
    text = sys.stderr if args.json else sys.stdout
    print(format_markdown(results), file=text)
    out = Path(results["config"]["out"])
    print(
        f"{len(finished)} settings now, {len(results['settings']) - len(finished)} already done, "
        f"{len(results['failed'])} failed; results in {out / 'results.json'} and {out / 'results.md'} "
        f"(ledger: {out / 'runs.jsonl'})",
        file=text,
    )
    if args.json:
        print(json.dumps(results, indent=1))


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
