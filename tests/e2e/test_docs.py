"""The README's Python API examples run as written."""

import os
import re
import subprocess
import sys

from _data import REPO


def api_examples() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_api_examples_run(data_root, tmp_path):
    blocks = api_examples()
    assert len(blocks) == 2 and len([line for line in blocks[0].splitlines() if line.strip()]) <= 5
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
    first, second = outputs
    assert "'psnr'" in first and "'lpips'" in first
    assert second.startswith("[3, 14, 15, 92]")  # iLRG restores the labels the comment promises
