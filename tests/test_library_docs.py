"""Every ```python block of docs/library.md and README.md runs as written (a fresh
interpreter each), and all of them pass `mypy --strict` and pyright."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "docs" / "library.md", ROOT / "README.md"]
BLOCKS = [
    (f"{src.name}-{n + 1}", code)
    for src in SOURCES
    for n, code in enumerate(re.findall(r"^```python\n(.*?)^```$", src.read_text(encoding="utf-8"), re.M | re.S))
]
BIN = Path(sys.executable).parent


def test_the_guide_and_the_readme_have_their_examples() -> None:
    names = [name for name, _ in BLOCKS]
    assert sum(n.startswith("library.md") for n in names) >= 7 and any(n.startswith("README.md") for n in names)


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_each_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # two type checkers over every example: half a minute
def test_the_examples_pass_mypy_strict_and_pyright(tmp_path: Path) -> None:
    files = []
    for name, code in BLOCKS:
        path = tmp_path / (re.sub(r"\W", "_", name) + ".py")
        path.write_text(code, encoding="utf-8")
        files.append(str(path))
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    pyright = subprocess.run(
        [str(BIN / "pyright"), "--pythonpath", sys.executable, *files],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert pyright.returncode == 0, pyright.stdout + pyright.stderr
