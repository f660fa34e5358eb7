"""The import contracts (pyproject.toml's ``[tool.importlinter]``) hold on this tree, and they
are not vacuous: an upward import, a family importing another, an API module naming an
engine family and an import cycle (the pool's leases importing the pool again) each break
the contract meant to catch it.

``lint-imports`` runs on a copy of ``src/aiml`` (the copy first on ``PYTHONPATH``), so the
real tree is never edited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "aiml", src / "aiml", ignore=shutil.ignore_patterns("*.pyc"))
    return src


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("registry/references.py", "import aiml.inference.manager", "The layers follow"),
        ("engines/base.py", "import aiml.inference.router", "The layers follow"),
        ("engines/media/onnx.py", "import aiml.engines.llamacpp.native", "are independent"),
        ("engines/pool/leases.py", "import aiml.engines.local", "Inside engines"),
        ("api/routes/openai.py", "import aiml.engines.remote.openai", "names an engine family"),
        ("cluster/replica.py", "import aiml.services", "The layers follow"),
        ("engines/pool/leases.py", "import aiml.engines.pool.model_pool", "No import cycles"),
        # the old cycle, spelled as it was: through the package's re-export
        ("engines/pool/leases.py", "from aiml.engines.pool import ModelPool", "Inside the pool"),
        ("edge/answers.py", "import aiml.settings", "The edge imports nothing"),
        ("registry/mlflow.py", "import aiml.registry.artifacts", "No import cycles"),
    ],
)
def test_an_import_against_the_layers_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    src = _copy(tmp_path)
    target = src / "aiml" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(src)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(contract in row for row in broken), result.stdout
