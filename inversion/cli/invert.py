"""Gradient inversion: reconstruct a client's private batch from its shared update, and score it.

    python scripts/invert.py [--labels MODE] [--config configs/invert/default.yaml] [--device auto|cpu|cuda]
                             [--update update.pt [--private private.pt] [--weights model.pt]]
                             [--out DIR] [--resume] [key=value | group=name ...]

Without --update, the config's client is simulated. With --update, the saved update is attacked (the
model comes from its public metadata; --weights loads the model state it was computed on, if the
update does not name it), and --private scores the result against the client's private batch.
MODE is a label-restoration method (ilrg, idlg, gi, rlg, llg, bias_corrected), oracle (the true
labels; needs the private batch), joint (learned per dummy, DLG) or shared (one learned label vector).
The run directory gets results.json, reconstruction.pt/.png, config.yaml, checkpoint.pt and, with the
private batch, grid.png and the scores; --resume continues from the checkpoint; Ctrl-C stops,
writes the best result so far and its checkpoint, and exits with code 130.
"""

from inversion.cli import config_parser, run_cli
from inversion.config import ConfigError, InvertConfig, load_config
from inversion.experiments.invert import run_inversion
from inversion.fl.update import SharedUpdate


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/invert/default.yaml")
    parser.add_argument("--labels", help="label mode (sets attack.labels)")
    parser.add_argument("--device", help="auto, cpu or cuda (sets attack.device)")
    parser.add_argument("--update", help="attack this saved update file instead of simulating a client (sets update)")
    parser.add_argument("--private", help="the client's private-batch file, to score the result (sets private)")
    parser.add_argument("--weights", help="the model state the update was computed on (sets model.weights)")
    parser.add_argument("--out", help="run directory (sets out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_intermixed_args()
    if args.update:
        keys = [o.split("=")[0] for o in args.overrides]
        unused = [k for k in keys if k.split(".")[0] in ("data", "client") and k != "data.root"]
        if unused:
            raise ConfigError(
                f"{unused[0]!r} does not apply to --update: the saved update fixes the data and client "
                "(only data.root, where the LPIPS weights are cached, is used)"
            )
        fixed = [k for k in keys if k.split(".")[0] == "model" and k != "model.weights"]
        if fixed and (named := SharedUpdate.load(args.update).meta.model) is not None:
            raise ConfigError(
                f"{fixed[0]!r} does not apply to --update {args.update}: the update names its model "
                f"({named['name']}), which is attacked; only model.weights (--weights), the state the "
                "update was computed on, is used"
            )
    flags = [
        f"{key}={value}"
        for key, value in (
            ("attack.labels", args.labels),
            ("attack.device", args.device),
            ("update", args.update),
            ("private", args.private),
            ("model.weights", args.weights),
            ("out", args.out),
        )
        if value
    ]
    cfg = load_config(InvertConfig, args.config, [*args.overrides, *flags])
    done = run_inversion(cfg, resume=args.resume)
    results, attack = done.results, done.results["attack"]
    print(
        f"labels ({results['label_mode']}): counts {results['label_counts']}"
        + (
            ""
            if results["label_metrics"] is None
            else " - used by the attack (sum to K): " + _label_scores(results["label_metrics"])
        )
    )
    restoration = results["restoration"]
    if restoration is not None and restoration["raw_metrics"] is not None:
        print(
            f"  {restoration['method']} raw counts (as the paper scores them): "
            + _label_scores(restoration["raw_metrics"])
        )
    for finding in restoration["diagnostics"] if restoration is not None else ():
        print(f"  warning: {finding}")
    print(
        f"matching loss {attack['matching_loss']:.4g} after {attack['steps']} steps in {attack['seconds']:.0f} s"
        + (", interrupted" if attack["interrupted"] else "")
    )
    if results["image_metrics"] is not None:
        scores = results["image_metrics"]["mean"]
        print(
            f"reconstruction: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, LPIPS {scores['lpips']:.3f} "
            f"(mean over {len(results['labels_used'])} images)"
        )
    else:
        print("no private batch given: images and labels written, not scored (--private scores them)")
    files = sorted(p.name for p in done.out.iterdir() if not p.name.startswith("."))
    print(f"results in {done.out}/: {', '.join(files)}")
    if attack["interrupted"]:  # the best so far is written, but the run did not finish: exit code 130
        raise KeyboardInterrupt(
            f"the attack stopped after {attack['steps']} steps; its best result so far is in "
            f"{done.out}/ (--resume continues it)"
        )


def _label_scores(metrics: dict) -> str:
    return "LeAcc {LeAcc:.3f} LnAcc {LnAcc:.3f} IRec {IRec:.3f}".format(**metrics)


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
