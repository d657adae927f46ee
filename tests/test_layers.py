"""The package's layering, checked on the source: library code has no Dagster in it, and
production code never imports the demo world nor, at import time, the embedded stand-ins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import viva_pipelines

PACKAGE = Path(viva_pipelines.__file__).parent
DEMO = ("viva_pipelines.demo_world",)
STAND_INS = ("viva_pipelines.embedded",)
#: Packages that are not production code: the demo world and the embedded profile's stand-ins.
APART = {"demo_world", "embedded"}
#: The command line offers the demo's own commands (`viva demo-data`), so it may reach the demo.
DEMO_ENTRY_POINTS = {"cli.py"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in APART)


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def _offenders(prefixes: tuple[str, ...], *, top_level_only: bool, exempt=frozenset()) -> list:
    return [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in _modules()
        if str(path.relative_to(PACKAGE)) not in exempt
        for line, name in _imports(path, top_level_only=top_level_only)
        if name.startswith(prefixes)
    ]


def test_production_code_never_imports_the_demo_world():
    assert _offenders(DEMO, top_level_only=False, exempt=DEMO_ENTRY_POINTS) == []


def test_production_code_reaches_the_stand_ins_only_when_configured_to():
    """Imports of the embedded package sit inside the functions that handle a null
    ``models.*`` entry or ``pairs.backend: opencv``, never at module level."""
    assert _offenders(STAND_INS, top_level_only=True) == []


def test_library_code_has_no_dagster():
    """``dagster_pipes`` aside: the small protocol library a training process reports through."""
    library = [p for p in _modules() if p.relative_to(PACKAGE).parts[0] not in {"defs"}]
    library = [p for p in library if p.name not in {"definitions.py", "cli.py"}]
    dagster = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in library
        for line, name in _imports(path, top_level_only=False)
        if name == "dagster" or name.startswith(("dagster.", "dagster_"))
        if not name.startswith("dagster_pipes")
    ]
    assert dagster == []


#: In a fresh interpreter: which of the model libraries it has imported.
MODEL_LIBRARIES = "sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules))"


def _after_import(module: str, *expressions: str) -> list[Any]:
    """The values of ``expressions`` in a fresh interpreter that has imported
    ``viva_pipelines.<module>`` and nothing else."""
    code = f"import sys, viva_pipelines.{module};" + ";".join(f"print({e})" for e in expressions)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    return [ast.literal_eval(line) for line in out.strip().splitlines()[-len(expressions) :]]


def test_loading_the_definitions_loads_neither_the_demo_nor_the_stand_ins():
    """Nor the model libraries: every `viva` command, run worker and UI load reads the
    definitions, and torch, diffusers and transformers take seconds to import (an asset imports
    what it needs when it runs)."""
    packages, libraries = _after_import(
        "definitions",
        "sorted({m.split('.')[1] for m in sys.modules"
        " if m.startswith('viva_pipelines.') and m.count('.') >= 1})",
        MODEL_LIBRARIES,
    )
    assert "defs" in set(packages) and not set(packages) & APART
    assert libraries == []


@pytest.mark.parametrize(
    "module",
    [
        "model.requests",  # viva edit's checks of a request and its model folder
        "train.preflight",  # the training assets' checks of models.* (run by every asset load)
        "model.sources",  # where weights come from: paths and hub ids
        "model.channels",  # the editing DiT's channel layout
    ],
)
def test_the_checks_import_no_model_library(module: str):
    """viva edit refuses a bad request or model folder, and the definitions load, before
    torch, diffusers and transformers (seconds on 2 cores): these modules import none of them,
    so no light caller can pull them in."""
    assert _after_import(module, MODEL_LIBRARIES) == [[]]


def _asset_bodies() -> list[tuple[str, int]]:
    """(asset, lines of its body below the docstring) of every asset in defs/."""
    bodies = []
    for path in sorted((PACKAGE / "defs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
            if isinstance(node, ast.FunctionDef) and any("asset" in d for d in decorators):
                body = node.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]
                bodies.append((f"{path.name}:{node.name}", node.end_lineno - body[0].lineno + 1))
    return bodies


def test_assets_only_orchestrate():
    """An asset reads its settings, calls the library, writes metadata: 30 lines at most."""
    bodies = _asset_bodies()
    assert len(bodies) >= 10  # the measure finds the assets
    assert [(name, lines) for name, lines in bodies if lines > 30] == []
