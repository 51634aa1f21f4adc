"""A self-contained HTML walk-through of one gradient-leakage attack, for learners.

Two paired runs of the same client batch, model and initial dummies (iLRG-restored labels and
the label-free "shared" baseline) of one resolved inversion config are turned into one page with every
picture embedded as a base64 PNG: no external asset, so it opens offline in any browser. Its last section
trains the same model for one epoch (:func:`trained_case`) and shows what changes for a client batch of images it
was trained on: iLRG's counts go wrong, disaggregation recovers the images exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inversion.attack.disaggregation import Disaggregation, disaggregate
from inversion.attack.span import first_linear_weight, span_for_update
from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, TrainConfig, load_config
from inversion.experiments.invert import InversionRun, run_inversion
from inversion.experiments.train import TrainingRecord, run_training
from inversion.fl.simulate import ClientRun, model_from_config, simulate_client, source_from_config
from inversion.restore import restore_from_update
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write
from inversion.utils.plotting import figure, save_image_rows
from inversion.utils.rundir import run_folder
from label_restore import RestorationResult, label_metrics

__all__ = [
    "SECTIONS",
    "TRAINED_BATCH_SIZE",
    "TrainedCase",
    "render_page",
    "run_demo",
    "trained_case",
    "trained_case_skipped",
]

SECTIONS = ("private-batch", "server-view", "labels", "reconstruction", "results", "trained")
DEMO_OUTPUTS = ("demo.html", "demo.png")
TRAINED_BATCH_SIZE = 24
"""Images in the client batch of the trained-model section: on FCN-3 after one epoch, iLRG's counts fail
(LnAcc 0.0-0.1 over client seeds 0-2) while disaggregation recovers 20-24 of the 24 images."""
EXACT = 1e-4
"""A recovered image within this relative error of the private one counts as exact: float32 pixels and gradients
carry about 7 significant digits, and verified samples of a trained FCN-3 measure 1e-7 to 1e-5 (faint ones more)."""
TRAINING = ("train.epochs=1", "train.checkpoint_epochs=[1]")
"""The demo's training: ``configs/train/fcn3_mnist.yaml`` (mini-batch SGD, 20 % held out) for one epoch."""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _gradient_figure(update) -> str:
    grad_w = update.gradients["fc.weight"].numpy()
    grad_b = update.gradients["fc.bias"].numpy()
    fig, (left, right) = figure(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [4, 1]})
    limit = float(np.abs(grad_w).max()) or 1.0
    shown = left.imshow(grad_w, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
    left.set_xlabel("embedding unit")
    left.set_ylabel("class")
    left.set_title("gradient of the final layer's weights (one row per class)", fontsize=10)
    fig.colorbar(shown, ax=left, fraction=0.03)
    right.barh(np.arange(len(grad_b)), grad_b, color=["tab:blue" if v < 0 else "tab:red" for v in grad_b])
    right.invert_yaxis()
    right.set_title("bias gradient", fontsize=10)
    return _png(fig)


@dataclasses.dataclass(frozen=True)
class TrainedCase:
    """The trained-model section's run: one epoch of training, then one FedSGD client attacked twice.

    Attributes:
        record: the training run (``epoch_001.pt`` and its log, in the section's folder).
        client: the client (K images the model was trained on) with its update, private batch and model.
        ilrg: iLRG's restoration from the update.
        found: disaggregation's recovered samples (n of K).
        matches: (n,) int64, the position in the private batch of each recovered sample (the nearest image).
        errors: (n,) float64, each recovered image's relative error ``|x' - x| / |x|`` against that image
            (normalised pixels).
        picture: the PNG of the private batch above the recovered images.
    """

    record: TrainingRecord
    client: ClientRun
    ilrg: RestorationResult
    found: Disaggregation
    matches: np.ndarray
    errors: np.ndarray
    picture: Path


def trained_case_skipped(cfg: InvertConfig) -> str | None:
    """Why the trained-model section does not apply to ``cfg``'s model, or None: it draws the images that
    disaggregation recovers, so the model's first layer must be fully connected on the image, and batch norm (which
    mixes a batch's samples) must be absent."""
    source = source_from_config(cfg.data)
    model = model_from_config(cfg.model, source)
    shape = (source.spec.channels, *source.spec.image_size)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return (
            f"{model.config['name']} has batch norm, which mixes the samples of a batch (disaggregation needs each one)"
        )
    if first_linear_weight(model, shape) is None:
        return (
            f"{model.config['name']}'s first layer is not fully connected on the image, so disaggregation would "
            "recover features, not images to draw (the default model=fcn3 shows it)"
        )
    return None


def trained_case(
    cfg: InvertConfig, out: Path, batch_size: int = TRAINED_BATCH_SIZE, progress: bool = True
) -> TrainedCase:
    """Train ``cfg``'s model for one epoch into ``out`` (:data:`TRAINING`), then restore the labels of a client
    batch of ``batch_size`` of its training images with iLRG and recover the images by disaggregation.

    Raises:
        InputError: the model's first layer is not fully connected on the image (disaggregation then recovers
            features, which the page cannot draw), or what disaggregation refuses (batch norm, a FedAvg client).
    """
    settings = load_config(TrainConfig, CONFIG_DIR / "train" / "fcn3_mnist.yaml", list(TRAINING))
    record = run_training(
        dataclasses.replace(settings, data=cfg.data, model=cfg.model, out=str(out)), progress=progress
    )
    client = simulate_client(
        dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, weights=str(record.checkpoints[1])),
            client=dataclasses.replace(cfg.client, images="trained", batch_size=batch_size),
        ),
        progress=False,
    )
    ilrg = restore_from_update("ilrg", client.update, client.model)
    found = disaggregate(client.update, client.model)
    if not found.on_image:
        raise InputError(
            f"the demo's last section draws the images disaggregation recovers, but {client.model.config['name']}'s "
            f"first linear layer ({found.layer}) reads features: use a model whose first layer is fully connected "
            "(model=fcn3, the default)"
        )
    truth = client.private.images.double().flatten(1).numpy()  # (K, D), normalised like found.inputs
    gaps = np.linalg.norm(found.inputs[:, None, :] - truth[None], axis=2) / np.linalg.norm(truth, axis=1)  # (n, K)
    matches = gaps.argmin(axis=1)
    errors = gaps[np.arange(found.found), matches]
    meta = client.update.meta
    recovered = torch.full_like(client.private.images, 0.5)  # grey where nothing was recovered
    recovered[torch.as_tensor(matches)] = meta.denormalize(found.images(client.private.images.shape[1:]))
    picture = save_image_rows(
        [meta.denormalize(client.private.images), recovered],
        out / "recovered.png",
        row_names=["private", "recovered"],
        captions=[
            [f"class {int(y)}" for y in client.private.labels],
            [_recovered_caption(found, matches, i) for i in range(len(client.private.labels))],
        ],
    )
    return TrainedCase(record, client, ilrg, found, matches, errors, picture)


def _recovered_caption(found: Disaggregation, matches: np.ndarray, position: int) -> str:
    """The caption under the recovered image of the private batch's ``position``: its verified label, or none."""
    hits = np.flatnonzero(matches == position)
    return f"class {int(found.labels[hits[0]])}" if len(hits) else "not recovered"


def _labels_figure(true_counts: np.ndarray, restored: np.ndarray) -> str:
    classes = np.flatnonzero((true_counts > 0) | (restored > 0))
    fig, ax = figure(figsize=(7, 2.8))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, true_counts[classes], 0.4, label="true count")
    ax.bar(x + 0.2, restored[classes], 0.4, label="restored by iLRG")
    ax.set_xticks(x)
    ax.set_xticklabels([str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("images in the batch")
    ax.legend(fontsize=8)
    return _png(fig)


def _span_paragraph(run: InversionRun) -> str:
    """What the first-layer span constraint is, with its leading directions drawn as images; "" when unused."""
    record = run.results["attack"]["span"]
    if record is None:
        return ""
    update = run.update  # the span is the attack's: recomputed from public data, as the attack did
    assert update.meta.input_shape is not None  # the attack's image shape, which its span needed
    span = span_for_update("always", run.model, update.gradients, run.plan.batch_size, update.meta.input_shape)
    assert span is not None  # "always" returns the span or raises
    shown = min(8, span.rank)
    directions = span.basis.T[:shown].reshape(shown, *span.image_shape)
    low = directions.amin(dim=(1, 2, 3), keepdim=True)
    high = directions.amax(dim=(1, 2, 3), keepdim=True)
    picture = save_image_rows(
        [(directions - low) / (high - low).clamp_min(1e-12)],
        run.out / "span.png",
        captions=[[f"direction {i + 1}" for i in range(shown)]],
    )
    return f"""
<p><b>A shortcut the gradient gives away.</b> This model's first layer is fully connected
(<code>{html.escape(record["layer"])}</code>): each of its outputs multiplies the flattened image by a row of
weights, so each row of that weight's gradient is a weighted sum of the {run.plan.batch_size} private images.
All private images therefore lie in the space spanned by those rows: {record["rank"]} directions out of
{record["dimension"]:,} pixels. The attack searches only there ({record["rank"]} numbers per dummy instead of
{record["dimension"]:,}; <code>attack.span</code>), which is why it converges so fast here. Below, the leading
directions of that space, drawn as images: already blends of the private digits.</p>
{_img(_file_png(picture), "leading directions of the first-layer span")}"""


def _metrics_row(name: str, results: dict) -> str:
    mean, labels = results["image_metrics"]["mean"], results["label_metrics"]
    return (
        f"<tr><td>{html.escape(name)}</td><td>{labels['LnAcc']:.3f}</td><td>{mean['psnr']:.2f}</td>"
        f"<td>{mean['ssim']:.3f}</td><td>{mean['lpips']:.3f}</td></tr>"
    )


def _counts_table(rows: dict[str, np.ndarray]) -> str:
    """An HTML table of label counts, one row per name (each (C,)), one column per class any row counts."""
    classes = np.flatnonzero(np.any(np.stack(list(rows.values())) > 0, axis=0))
    head = "".join(f"<th>{c}</th>" for c in classes)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{int(counts[c])}</td>' for c in classes)}</tr>"
        for name, counts in rows.items()
    )
    return f"<table><tr><th>class</th>{head}</tr>{body}</table>"


def _trained_section(case: TrainedCase, untrained_lnacc: float) -> str:
    """The body of the section "What training changes"."""
    client, found = case.client, case.found
    k, n = found.batch_size, found.found
    classes = case.ilrg.counts.shape[0]
    truth = np.bincount(client.private.labels.numpy(), minlength=classes)
    verified = np.bincount(found.labels, minlength=classes)
    right = int((found.labels == client.private.labels.numpy()[case.matches]).sum())
    last = case.record.history[-1]
    exact = int((case.errors < EXACT).sum())
    largest = f"; the largest error {case.errors.max():.0e}" if n else ""
    rest = (
        f"; the label method <code>disaggregation</code> counts the rest ({k - n}) with iLRG on what remains of "
        "the gradient"
        if n < k
        else ""
    )
    faint = (
        f" Only {found.visible} of the {k} images rose above the float32 rounding noise of the first layer's "
        "gradient: the model classifies the others so confidently that their gradient is lost in the rounding."
        if found.visible < k
        else ""
    )
    return f"""
<p>Everything above attacked an untrained model, as in a federation's first round. Later rounds share a
model that has already learned. Here the same model was trained for one epoch on
{len(case.record.train_indices):,} of the digits (mini-batch SGD as in <code>configs/train/fcn3_mnist.yaml</code>,
{last["seconds"]:.1f} s); it now classifies {last["held_out_accuracy"]:.1%} of
{len(case.record.held_out_indices):,} held-out digits correctly. A client then shares the full gradient of a
batch of {k} of the digits it was trained on.</p>
<p><b>The final layer goes quiet.</b> A trained model is confident about most digits it has seen: its predicted
probability is close to 1 for the right class and close to 0 for the others, so (predicted probability − 1 or 0)
is almost zero and those digits barely move the final layer's gradient. iLRG reads the counts from that layer
alone: here its LnAcc is {label_metrics(case.ilrg.counts, truth)["LnAcc"]:.3f} (1.000 = every count exact; on
the untrained model of section 3 it was {untrained_lnacc:.3f}).</p>
{_counts_table({"true count": truth, "restored by iLRG": case.ilrg.counts, "verified by disaggregation": verified})}
<p><b>The first layer still holds every image.</b> The first layer's weight gradient is a sum of one term per
image: the image itself, times how much that image asks each hidden unit to change. Every private image lies in
the space its rows span (the shortcut of section 4), and more: most pixels of a digit sit exactly at black, the
lowest value a pixel can take, so each image is a corner of the set of images in that space with no pixel below
black. <em>Disaggregation</em> finds such corners with linear programmes, runs each candidate through the rest of
the model with every possible label, and keeps it only when it explains the gradients of the later layers too
(a blend of two digits does not); it then subtracts the kept image's own gradient and searches what is left.
Confidence shrinks an image's term but does not change its direction, so no optimisation and no label guess is
needed.</p>
<p>Here it recovered {n} of the {k} images with their labels ({right} of {n} right), {exact} of them exactly
(within a relative error of {EXACT:.0e} of the private image: float32 rounding{largest}), in {found.seconds:.1f} s
({found.programmes} linear programmes).{faint} Why it stopped: {html.escape(found.stopped)}. Its verified labels
are the last row of the table{rest}.</p>
{_img(_file_png(case.picture), "private batch and the images disaggregation recovered")}
<p>Training hides the label counts from the final layer, not the images from the first: a fully connected
layer's gradient gives its inputs away exactly.</p>"""


def render_page(with_labels: InversionRun, without_labels: InversionRun, trained: TrainedCase | str) -> str:
    """The HTML page (a string) for a paired ``ilrg`` run and ``shared`` run and the trained-model case (or why
    it was not run: :func:`trained_case_skipped`)."""
    update, private = with_labels.update, with_labels.private
    if private is None:
        raise InputError("the demo page shows the client's private batch: simulate the client (no update=)")
    truth01 = update.meta.denormalize(private.images).clamp(0, 1)
    batch = _file_png(
        save_image_rows(
            [truth01], with_labels.out / "batch.png", captions=[[f"class {int(y)}" for y in private.labels]]
        )
    )
    num_classes = with_labels.plan.num_classes
    true_counts = np.bincount(private.labels.numpy(), minlength=num_classes)
    restored = np.bincount(np.asarray(with_labels.results["labels_used"]), minlength=num_classes)
    sizes = "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{tuple(g.shape)}</td><td>{g.numel():,}</td></tr>"
        for n, g in update.gradients.items()
    )
    total = sum(g.numel() for g in update.gradients.values())
    r_with, r_without = with_labels.results, without_labels.results
    gain = r_with["image_metrics"]["mean"]["psnr"] - r_without["image_metrics"]["mean"]["psnr"]
    steps = r_with["attack"]["steps"]
    source = html.escape(private.record["data_source"].split(";")[0])  # where the images came from
    model = html.escape(with_labels.model.config["name"])
    k = update.batch_size
    sections = {
        "private-batch": (
            "1. The client's private batch",
            f"""
<p>A federated-learning client holds {k} private images ({source}). It never sends them: it computes
how the shared model ({model}, untrained here) should change to fit them and sends only that
<em>update</em> to the server.</p>{_img(batch, "the private batch")}""",
        ),
        "server-view": (
            "2. What the server receives",
            f"""
<p>The update is the gradient of the mean cross-entropy over the batch for every parameter:
{total:,} numbers in {len(update.gradients)} tensors. It looks like noise, but it is a deterministic
function of the private images and their labels.</p>
<table><tr><th>parameter</th><th>shape</th><th>values</th></tr>{sizes}</table>
<p>The final layer's gradient is the most telling: for class <i>i</i>, the bias gradient is the
average of (predicted probability − 1 if the image is of class <i>i</i>, else predicted probability),
so classes present in the batch show up as negative entries.</p>
{_img(_gradient_figure(update), "final-layer gradient")}""",
        ),
        "labels": (
            "3. Restoring the labels (iLRG)",
            f"""
<p>iLRG divides each class's weight-gradient row by its bias gradient to estimate that class's
average embedding, feeds it back through the final layer, and solves one small linear system for
how many images of each class the batch holds. Here it restored the label counts with LnAcc
{r_with["label_metrics"]["LnAcc"]:.3f} (1.000 = every class count exact), in
{1000 * r_with["restoration"]["seconds"]:.1f} ms.</p>{_img(_labels_figure(true_counts, restored), "label counts")}""",
        ),
        "reconstruction": (
            "4. Reconstructing the images",
            f"""
<p>The server now starts from random images and changes them, step by step, until their gradient
matches the one it received ({steps} steps of Adam on the cosine distance between gradients, with a
small total-variation prior). On the left the dummies carry the restored labels; on the right the
attacker does not know the labels and must learn one label vector for the whole batch at the same time.</p>
{_span_paragraph(with_labels)}
<div class="pair"><figure>{_img(_file_png(with_labels.out / "snapshots.png"), "with restored labels")}
<figcaption>with iLRG labels</figcaption></figure>
<figure>{_img(_file_png(without_labels.out / "snapshots.png"), "without labels")}
<figcaption>without labels ("shared")</figcaption></figure></div>""",
        ),
        "results": (
            "5. What the labels gained",
            f"""
<table><tr><th>labels</th><th>label LnAcc</th><th>PSNR (dB)</th><th>SSIM</th><th>LPIPS</th></tr>
{_metrics_row("restored by iLRG", r_with)}{_metrics_row("unknown (shared)", r_without)}</table>
<p>Knowing the labels improved the reconstruction by {gain:.1f} dB PSNR. Labels matter because the
gradient mixes what each image looks like with which class it belongs to: with the wrong label, the
images that reproduce the gradient best are the wrong images. Restoring the labels first removes that
ambiguity, so the optimisation only has to find the pixels. Higher PSNR and SSIM and lower LPIPS
mean closer to the private images.</p>
{_img(_file_png(with_labels.out / "grid.png"), "final reconstruction with iLRG labels")}""",
        ),
        "trained": (
            "6. What training changes",
            _trained_section(trained, r_with["label_metrics"]["LnAcc"])
            if isinstance(trained, TrainedCase)
            else f"<p>Not shown for this model: {html.escape(trained)}.</p>",
        ),
    }
    body = "".join(
        f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, (title, content) in sections.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>How much does a gradient leak?</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #222; }}
section {{ margin-bottom: 2.5em; }} img {{ max-width: 100%; }} table {{ border-collapse: collapse; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }}
.pair {{ display: flex; gap: 1em; }} .pair figure {{ flex: 1; margin: 0; }}
figcaption {{ text-align: center; font-weight: bold; }}
</style></head><body>
<h1>How much does a shared gradient leak?</h1>
<p>One gradient-inversion attack on one federated-learning client, step by step.</p>
{body}</body></html>
"""


SNAPSHOTS = 4
"""Snapshots of the dummies the page shows per run: every ``max_steps // SNAPSHOTS`` steps, unless
``attack.snapshot_every`` is given (not 0)."""


def _snapshots(cfg: InvertConfig) -> InvertConfig:
    """``cfg`` with ``attack.snapshot_every`` of the page: as given (1..max_steps), or spread over the run (0)."""
    steps, every = cfg.attack.max_steps, cfg.attack.snapshot_every
    if every == 0:
        every = max(1, steps // SNAPSHOTS)
    elif every > steps:
        raise ConfigError(
            f"must be 1..attack.max_steps ({steps}), got {every}: the demo shows snapshots; "
            f"leave it out (or 0) for {SNAPSHOTS} spread over the run",
            "attack.snapshot_every",
        )
    return dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, snapshot_every=every))


def run_demo(
    out: str | Path, cfg: InvertConfig, *, progress: bool = True, trained_batch_size: int = TRAINED_BATCH_SIZE
) -> Path:
    """Run the trained-model case (:func:`trained_case`, in ``out/trained/``, with a client batch of
    ``trained_batch_size``) and the paired attacks of a resolved config (its ``attack.labels`` set to ``ilrg``,
    then ``shared``; each run in ``out/<labels>/``) and write ``out/demo.html``; returns its path."""
    cfg = _snapshots(cfg)
    with run_folder(out, DEMO_OUTPUTS) as out:
        skipped = trained_case_skipped(cfg)
        trained = skipped if skipped else trained_case(cfg, out / "trained", trained_batch_size, progress)
        runs = {}
        for mode in ("ilrg", "shared"):
            attack = dataclasses.replace(cfg.attack, labels=mode)
            runs[mode] = run_inversion(dataclasses.replace(cfg, attack=attack, out=str(out / mode)), progress=progress)
            if runs[mode].result.interrupted:  # Ctrl-C: no second attack, no page of half a comparison
                raise KeyboardInterrupt(f"the demo stopped during its {mode} attack; no demo.html written")
        path = out / "demo.html"
        with atomic_write(path) as handle:
            handle.write(render_page(runs["ilrg"], runs["shared"], trained).encode())
    return path
