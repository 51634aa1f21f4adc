"""Gradient inversion: reconstruct a client's private batch from its shared update, and score it.

    python scripts/invert.py [--labels MODE] [--config configs/invert/default.yaml] [--device auto|cpu|cuda]
                             [--out DIR] [--resume] [key=value | group=name ...]

MODE is a label-restoration method (ilrg, idlg, gi, rlg, llg, bias_corrected), oracle (the true labels),
joint (learned per dummy, DLG) or shared (one learned label vector for the batch). The run directory
gets results.json, grid.png (true images above their matched reconstructions), config.yaml and
checkpoint.pt; --resume continues from the checkpoint; Ctrl-C stops and writes the best result so far.
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

from inversion.cli import config_parser, run_cli
from inversion.config import InvertConfig, load_config
from inversion.pipeline import run_inversion


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/invert/default.yaml")
    parser.add_argument("--labels", help="label mode (sets attack.labels)")
    parser.add_argument("--device", help="auto, cpu or cuda (sets attack.device)")
    parser.add_argument("--out", help="run directory (sets out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args()
    flags = [f"{key}={value}" for key, value in
             (("attack.labels", args.labels), ("attack.device", args.device), ("out", args.out)) if value]
    cfg = load_config(InvertConfig, args.config, [*args.overrides, *flags])
    done = run_inversion(cfg, resume=args.resume)
    scores, attack = done.results["image_metrics"]["mean"], done.results["attack"]
    labels = done.results["label_metrics"]
    print(f"labels ({done.results['label_mode']}): LeAcc {labels['LeAcc']:.3f} LnAcc {labels['LnAcc']:.3f} "
          f"IRec {labels['IRec']:.3f}")
    print(f"reconstruction: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, LPIPS {scores['lpips']:.3f} "
          f"(mean over {len(done.results['labels_used'])} images; {attack['steps']} steps in {attack['seconds']:.0f} s"
          + (", interrupted" if attack["interrupted"] else "") + ")")
    print(f"results in {done.out}/: results.json, grid.png, config.yaml, checkpoint.pt")


if __name__ == "__main__":
    run_cli(main)
