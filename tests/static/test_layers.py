"""The layers of `shared/__init__.py`, as import-linter contracts (pyproject.toml).

Three contracts: each layer imports only the layers below it (lazy imports
inside functions count too), the engine never imports the sc migration (a
plug-in, loaded by name from settings), and no package has an import cycle
among its modules. The command is the one a developer runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.core.settings import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_every_import_points_down_the_layers_and_no_cycle_comes_back():
    # GIVEN the project's contracts / WHEN import-linter checks the code
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    # THEN every contract is kept (its output names the offending import chain otherwise)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    kept = [line for line in result.stdout.splitlines() if line.endswith(" KEPT")]
    assert len(kept) == 3, result.stdout[-2000:]
