"""Benchmark instance-wise label restoration (iLRG and baselines) over a sweep of settings.

    python scripts/restore_labels.py [--config configs/restore/NAME.yaml] [--json] [key=value | group=name ...]

For T trials per setting (each a new client batch and, unless restore.fixed_model, a new
untrained model) it restores the label counts from the shared update with every method,
prints a table of LeAcc / LnAcc / IRec (mean ± std) and restoration time, and writes
``results.json`` and ``results.md`` into ``out``. ``--json`` also prints the JSON to stdout
(the table then goes to stderr).
"""
import json
import sys
from pathlib import Path

from . import config_parser, run_cli
from ..label_benchmark import format_markdown, run_sweep


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/restore/default.yaml")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON on stdout")
    args = parser.parse_intermixed_args()
    results = run_sweep(args.config, args.overrides)
    text = sys.stderr if args.json else sys.stdout
    print(format_markdown(results), file=text)
    out = Path(results["config"]["out"])
    print(f"results written to {out / 'results.json'} and {out / 'results.md'}", file=text)
    if args.json:
        print(json.dumps(results, indent=1))


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
