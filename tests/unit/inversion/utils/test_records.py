"""Records (inversion.utils.records): a dataclass as plain data, its digest, and its YAML file."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from inversion.utils.records import as_record, record_digest, write_yaml_record


class Colour(enum.Enum):
    RED = "r"
    GREEN = "g"


@dataclass
class Inner:
    colour: Colour = Colour.GREEN
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    weights: dict[str, float] = field(default_factory=lambda: {"a": 0.5})
    rate: float = 1  # an int in a float field is recorded as the float
    where: Path = Path("data") / "x"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    out: str = "runs/x"
    note: str | None = None


EXPECTED = {
    "inner": {"colour": "GREEN", "sizes": [1, 2], "weights": {"a": 0.5}, "rate": 1.0, "where": "data/x"},
    "out": "runs/x",
    "note": None,
}


def test_as_record_writes_a_nested_dataclass_as_plain_data():
    record = as_record(Outer())
    assert record == EXPECTED
    assert isinstance(record["inner"]["rate"], float) and type(record["inner"]["sizes"]) is list
    assert json.loads(json.dumps(record)) == EXPECTED  # JSON-ready
    assert as_record(record) == EXPECTED and as_record(record) is not record  # a record comes back as a copy


def test_record_digest_is_the_sha256_of_the_record_without_the_ignored_keys():
    base = record_digest(Outer(), ignore=("out", "inner.sizes"), step=3)
    kept = {k: v for k, v in EXPECTED.items() if k != "out"}
    kept["inner"] = {k: v for k, v in EXPECTED["inner"].items() if k != "sizes"}
    assert base == hashlib.sha256(json.dumps({"config": kept, "step": 3}, sort_keys=True).encode()).hexdigest()
    # the ignored keys do not count...
    moved = Outer(inner=Inner(sizes=[7]), out="elsewhere")
    assert record_digest(moved, ignore=("out", "inner.sizes"), step=3) == base
    # ...every other key does, and so do the extra facts
    for other in (
        Outer(note="n"),
        Outer(inner=Inner(colour=Colour.RED)),
        Outer(inner=Inner(weights={"a": 0.25})),
        Outer(inner=Inner(rate=2.0)),
    ):
        assert record_digest(other, ignore=("out", "inner.sizes"), step=3) != base
    assert record_digest(Outer(), ignore=("out", "inner.sizes"), step=4) != base
    assert record_digest(Outer(), ignore=("out",), step=3) != base
    with pytest.raises(KeyError):
        record_digest(Outer(), ignore=("missing",))


def test_write_yaml_record_writes_the_record_after_its_header(tmp_path):
    path = tmp_path / "sub" / "config.yaml"
    write_yaml_record(Outer(), path, header="# what ran\n")
    text = path.read_text()
    assert text.startswith("# what ran\ninner:\n  colour: GREEN\n")
    assert yaml.safe_load(text) == EXPECTED
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
