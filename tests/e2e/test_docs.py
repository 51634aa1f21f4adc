"""The docs (README.md and docs/*.md) stay true to the tree: their links resolve, the paths and names they
mention exist, the README stays a front page whose Layout names every folder, and the Python API examples run."""

import importlib
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from _data import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES]
PACKAGES = ("inversion", "label_restore", "priors")
TOP_FOLDERS = ("scripts", "configs", "inversion", "label_restore", "priors", "tests", "docs")
# a repository path in any text: a top-level folder, then path characters (placeholders such as <command> end it)
REPO_PATH = re.compile(rf"(?<![\w./$-])((?:{'|'.join(TOP_FOLDERS)})/[\w./*-]*)")
DOTTED_NAME = re.compile(rf"(?<![\w./$-])((?:{'|'.join(PACKAGES)})(?:\.\w+)+)")
PY_IMPORT = re.compile(
    rf"^\s*(?:from\s+((?:{'|'.join(PACKAGES)})[\w.]*)\s+import\s+(.+)|import\s+((?:{'|'.join(PACKAGES)})[\w.]*))"
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.S | re.M)


def without_code(text: str) -> str:
    """The prose of a Markdown text: fenced blocks and inline code removed."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def code_blocks(text: str, language: str) -> list[str]:
    """The contents of the fenced blocks of ``language`` (e.g. "python"), in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """The text of the level-2 section ``heading`` (to the next level-2 heading)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors of a Markdown file's headings (outside code blocks), numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = slug(heading.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return frozenset(found)


def test_every_relative_link_resolves():
    broken = []
    for page in DOCS:
        for target in LINK.findall(without_code(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no file {path})")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} in {path or page.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_path_the_docs_mention_exists():
    """scripts/..., configs/... and package paths (globs must match something), in prose and in commands."""
    missing = []
    for page in DOCS:
        for mention in sorted(set(REPO_PATH.findall(page.read_text()))):
            path = mention.rstrip(".")
            if not (any(REPO.glob(path)) if "*" in path else (REPO / path).exists()):
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute chain of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def test_every_module_and_name_the_docs_mention_exists():
    """``inversion.x.y`` names in prose and Python examples, and those examples' imports from this project's packages
    (commands and outputs are left out: ``priors.tv=0.1`` there is a config key)."""
    missing = []
    for page in DOCS:
        text = page.read_text()
        python = code_blocks(text, "python")
        names = set(DOTTED_NAME.findall(FENCE.sub("", text) + "\n".join(python)))  # not config keys in commands
        for block in python:
            for line in block.splitlines():
                imported = PY_IMPORT.match(line)
                if imported and imported.group(1):
                    wanted = imported.group(2).strip("() ").split(",")
                    names |= {f"{imported.group(1)}.{w.split(' as ')[0].strip()}" for w in wanted if w.strip()}
                elif imported:
                    names.add(imported.group(3))
        missing += [f"{page.relative_to(REPO)}: {name}" for name in sorted(names) if not resolves(name)]
    assert not missing, "names that do not exist:\n" + "\n".join(missing)


def test_the_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 300
    assert PAGES, "no docs/*.md"


def test_the_layout_names_every_folder_of_the_tree():
    named = set(re.findall(r"`([\w./-]+/)`", section(README.read_text(), "Layout")))
    missing = sorted(folder for folder in named if not (REPO / folder).is_dir())
    assert not missing, f"the Layout names folders that do not exist: {missing}"
    folders = {
        f"{path.relative_to(REPO).as_posix()}/"
        for path in (REPO / "inversion").rglob("*")
        if path.is_dir() and not path.is_symlink() and path.name != "__pycache__" and "configs" not in path.parts
    }
    unnamed = sorted(folders - named)
    assert not unnamed, f"the Layout does not name these folders of inversion/: {unnamed}"
    assert {
        "inversion/",
        "label_restore/",
        "priors/",
        "configs/",
        "scripts/",
        "tests/unit/",
        "tests/e2e/",
        "docs/",
    } <= named


@pytest.mark.slow
def test_the_python_api_examples_run(data_root, tmp_path):
    """The README's five lines (also the first example of docs/python-api.md) and every example of that page."""
    readme_blocks = code_blocks(section(README.read_text(), "Python API"), "python")
    assert len(readme_blocks) == 1 and len([line for line in readme_blocks[0].splitlines() if line.strip()]) <= 5
    assert readme_blocks[0].startswith("import inversion as gl\n")
    blocks = code_blocks((REPO / "docs" / "python-api.md").read_text(), "python")
    assert len(blocks) == 3 and blocks[0] == readme_blocks[0]
    env = {**os.environ, "GRADLEAK_DATA": str(data_root)}
    shared = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "share_update.py"), "model=fcn3", "data.download=false"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert shared.returncode == 0, shared.stderr[-2000:]
    outputs = []
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    first, second, third = outputs
    assert "'psnr'" in first and "'lpips'" in first
    assert second.startswith("[3, 14, 15, 92]")  # iLRG restores the labels the comment promises
    assert third.startswith("[0, 0, 2, 3, 3, 3, 7, 9] fedavg")  # from the weight delta's pseudo-gradient


def test_the_registry_examples_register(tmp_path):
    """docs/development.md's examples register a label method and a prior that then work by name."""
    blocks = code_blocks((REPO / "docs" / "development.md").read_text(), "python")
    assert len(blocks) == 2
    check = (
        "import torch\n"
        "from label_restore import restore_labels\n"
        "from priors import build_priors\n"
        "gW, gb, W, b = torch.randn(10, 5), torch.randn(10), torch.randn(10, 5), torch.randn(10)\n"
        "r = restore_labels('all_class_zero', gW, gb, W, b, 4)\n"
        "print(r.counts.tolist(), float(build_priors({'l1': 1.0})(torch.full((2, 1, 4, 4), -3.0))[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "\n".join([*blocks, check])], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[4,", "0,", "0,", "0,", "0,", "0,", "0,", "0,", "0,", "0]", "3.0"]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("`aux`: a stronger server with labelled auxiliary data", "aux-a-stronger-server-with-labelled-auxiliary-data"),
        (
            "Measured against the paper (untrained models, this CPU, 2026-11-24)",
            "measured-against-the-paper-untrained-models-this-cpu-2026-11-24",
        ),
        ("Resume, sweeps and seeds", "resume-sweeps-and-seeds"),
        ("In the types: `SharedUpdate` and `PrivateBatch`", "in-the-types-sharedupdate-and-privatebatch"),
    ],
)
def test_anchors_are_githubs(heading, anchor):
    assert slug(heading) == anchor
