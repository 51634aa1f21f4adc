"""The teaching demo: one self-contained page with every section."""

import re

import pytest
from _data import ctrl_c_at_step

from inversion.cli.demo import demo_config
from inversion.config import ConfigError
from inversion.experiments.demo import SECTIONS, run_demo


def demo(out, overrides, **options):
    """The demo of ``scripts/demo.py`` with ``overrides``: its config resolved, then run."""
    return run_demo(out, demo_config(overrides), **options)


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
    assert text.count('src="data:image/png;base64,') >= 7
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
