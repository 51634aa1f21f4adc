"""The teaching demo: one self-contained page with every section."""

import base64
import re

import numpy as np
import pytest
from _data import ctrl_c_at_step

from inversion.attack.disaggregation import STOPS
from inversion.cli.demo import demo_config
from inversion.config import ConfigError
from inversion.experiments.demo import EXACT, SECTIONS, run_demo, trained_case, trained_case_skipped
from inversion.fl.simulate import simulate_client
from inversion.models.training_record import load_training_record
from inversion.restore import restore_from_update
from label_restore import label_metrics

TRAINED_K = 6
"""The trained-model section's batch in these tests: well below the width-16 first layer's 16 outputs (a gradient of
full rank hides the samples), and all 6 verified (client seeds 0-2 measured)."""


def demo(out, overrides, **options):
    """The demo of ``scripts/demo.py`` with ``overrides``: its config resolved, then run (a small trained case)."""
    return run_demo(out, demo_config(overrides), trained_batch_size=TRAINED_K, **options)


def test_demo_page_is_self_contained_and_complete(tmp_path, data_root):
    page = demo(
        tmp_path / "demo",
        [
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=3",
            "model.width=16",
            "attack.max_steps=8",
            "attack.snapshot_every=4",
        ],
        progress=False,
    )
    text = page.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert not re.search(r"(src|href)=\"(?!data:)", text)  # every image and link is embedded
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert text.count('src="data:image/png;base64,') >= 8
    assert "What the labels gained" in text and "restored by iLRG" in text
    # FCN-3's first layer is linear: the page explains the span constraint and draws its directions
    assert re.search(r"3 directions out of\s+784 pixels", text)
    assert (tmp_path / "demo" / "ilrg" / "span.png").is_file()


def test_demo_spreads_its_snapshots_over_a_short_run(tmp_path, data_root):
    """Fewer steps than the default snapshot interval: the snapshots follow the run's length."""
    page = demo(
        tmp_path / "demo",
        [
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=2",
            "model.width=16",
            "attack.max_steps=6",
        ],
        progress=False,
    )
    assert page.is_file() and (tmp_path / "demo" / "ilrg" / "snapshots.png").is_file()
    with pytest.raises(ConfigError, match=r"^attack.snapshot_every: must be 1..attack.max_steps \(6\), got 7"):
        demo(
            tmp_path / "demo2",
            [f"data.root={data_root}", "attack.max_steps=6", "attack.snapshot_every=7"],
            progress=False,
        )


def test_ctrl_c_during_the_first_attack_stops_the_demo(tmp_path, data_root, monkeypatch):
    """The second attack does not run and no page compares a finished run with an interrupted one."""
    calls = ctrl_c_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt, match="during its ilrg attack; no demo.html written"):
        demo(
            tmp_path / "demo",
            [
                f"data.root={data_root}",
                "data.download=false",
                "client.batch_size=2",
                "model.width=16",
                "attack.max_steps=6",
            ],
            progress=False,
        )
    assert len(calls) == 3  # the shared-label attack never started
    assert not (tmp_path / "demo" / "demo.html").exists() and not (tmp_path / "demo" / "shared").exists()


SMALL = ["data.download=false", "client.batch_size=2", "model.width=16", "attack.max_steps=4"]
"""A quick demo: a width-16 FCN-3, 4 attack steps on 2 images."""


def test_trained_case_recovers_the_private_images_a_trained_model_saw(tmp_path, data_root):
    """After one epoch, disaggregation gives back each of the client's images (to float32 rounding) with its label,
    and the picture is written."""
    case = trained_case(demo_config([f"data.root={data_root}", *SMALL]), tmp_path / "trained", TRAINED_K, False)
    private = case.client.private
    assert case.found.found == TRAINED_K
    assert sorted(case.matches.tolist()) == list(range(TRAINED_K))  # every image matched once
    assert case.errors.max() < EXACT  # from float32 gradients: exact to their rounding (measured ~1e-6)
    np.testing.assert_array_equal(case.found.labels, private.labels.numpy()[case.matches])
    assert case.record.history[-1]["epoch"] == 1 and case.picture.is_file()
    # the client drew from the images the model was trained on
    assert set(private.record["indices"]) <= set(case.record.train_indices.tolist())


def _row(text: str, name: str) -> list[int]:
    """The counts of the page's trained-section table row ``name``."""
    row = re.search(rf"<tr><td>{name}</td>((?:<td>\d+</td>)+)</tr>", text)
    assert row is not None, name
    return [int(v) for v in re.findall(r"\d+", row.group(1))]


def test_trained_section_shows_its_run(tmp_path, data_root):
    """The section's numbers are those of its run, recomputed here from the checkpoint it wrote: the training, the
    true counts, iLRG's counts and LnAcc, what disaggregation recovered; and its picture is embedded."""
    overrides = [f"data.root={data_root}", *SMALL]
    text = demo(tmp_path / "demo", overrides, progress=False).read_text()
    section = " ".join(text[text.index('<section id="trained">') :].split())  # one space between words
    folder = tmp_path / "demo" / "trained"
    record = load_training_record(folder / "epoch_001.pt")
    assert f"trained for one epoch on {len(record.train_indices):,} of the digits" in section
    assert f"classifies {record.history[-1]['held_out_accuracy']:.1%} of" in section
    client = simulate_client(
        demo_config(
            [
                *overrides,
                f"model.weights={folder / 'epoch_001.pt'}",
                "client.images=trained",
                f"client.batch_size={TRAINED_K}",
            ]
        ),
        progress=False,
    )
    truth = np.bincount(client.private.labels.numpy(), minlength=10)
    ilrg = restore_from_update("ilrg", client.update, client.model).counts
    classes = np.flatnonzero((truth > 0) | (ilrg > 0))  # the table's columns (all recovered: none other verified)
    assert re.search(r"<tr><th>class</th>((?:<th>\d+</th>)+)</tr>", section).group(1) == "".join(
        f"<th>{c}</th>" for c in classes
    )
    assert _row(section, "true count") == truth[classes].tolist()
    assert _row(section, "restored by iLRG") == ilrg[classes].tolist()
    assert _row(section, "verified by disaggregation") == truth[classes].tolist()
    assert f"its LnAcc is {label_metrics(ilrg, truth)['LnAcc']:.3f}" in section
    k = TRAINED_K
    assert f"recovered {k} of the {k} images with their labels ({k} of {k} right), {k} of them exactly" in section
    assert f"Why it stopped: {STOPS['all']}." in section
    picture = base64.b64encode((folder / "recovered.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{picture}"' in section


def test_the_trained_section_is_skipped_with_its_reason_where_disaggregation_draws_no_images(data_root):
    """LeNet-5's first linear layer reads features and ResNet-18 has batch norm: the section says why it is not
    shown, before any training; FCN-3 gets it."""

    def skipped(model):
        return trained_case_skipped(demo_config([f"data.root={data_root}", f"model={model}"]))

    assert skipped("fcn3") is None
    assert "first layer is not fully connected on the image" in skipped("lenet5")
    assert "batch norm" in skipped("resnet18")
