"""The tree is the architecture: layers import downwards only, each stage declares exactly the
code it runs, and the optional Dask engine stays out of the stages that do not use it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fraudlab"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = {
    "core": 0,
    "integrity": 1,
    "scaleout": 2,
    "data": 3,
    "features": 4,
    "modeling": 5,
    "monitoring": 6,
    "experiments": 7,
    "serving": 7,
    "registry": 7,
    "stages": 8,
    "cli": 8,
    "__main__": 9,
}


def _module_file(module: str) -> Path:
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    return path if path.exists() else path.with_suffix("") / "__init__.py"


def _imports(module: str, *, module_level: bool) -> set[str]:
    """The fraudlab modules ``module`` imports (``from fraudlab.core import schema`` names the
    module ``fraudlab.core.schema``); at module level only, or anywhere in it."""
    tree = ast.parse(_module_file(module).read_text())
    nodes = tree.body if module_level else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fraudlab"):
            if _module_file(node.module).name == "__init__.py":
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def _modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    )


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_every_module_sits_in_a_known_layer():
    assert {m.split(".")[1] for m in _modules()} <= set(LAYERS)


@pytest.mark.parametrize("module", _modules())
def test_a_module_never_imports_a_higher_layer(module):
    upward = sorted(m for m in _imports(module, module_level=False) if _layer(m) > _layer(module))
    assert not upward, f"{module} imports a higher layer: {upward}"


def _stage_module(stage: dict) -> str:
    words = stage["cmd"].split()
    return words[words.index("-m") + 1]


def _code_used(stage_module: str) -> set[Path]:
    """The files a stage's process imports at module level, followed transitively: what it
    runs whatever its params (an import inside a function is for one optional path)."""
    used = {stage_module}
    pending = [stage_module]
    while pending:
        for module in _imports(pending.pop(), module_level=True) - used:
            used.add(module)
            pending.append(module)
    return {_module_file(m).relative_to(ROOT) for m in used}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_code_it_runs(name):
    """An edit to a module a stage runs must rerun it (every used file is covered by a declared
    file or directory), and an edit elsewhere must not (every declared code dep is used)."""
    used = _code_used(_stage_module(STAGES[name]))
    declared = [Path(d) for d in STAGES[name]["deps"] if d.startswith("src/")]
    uncovered = sorted(str(f) for f in used if not any(f == d or d in f.parents for d in declared))
    unused = sorted(str(d) for d in declared if not any(f == d or d in f.parents for f in used))
    assert not uncovered, f"stage {name} misses code deps {uncovered}"
    assert not unused, f"stage {name} declares code it does not run: {unused}"


@pytest.mark.parametrize("stage", ["split", "evaluate", "monitor", "plots_template"])
def test_stages_that_do_not_scale_out_do_not_depend_on_the_engine(stage):
    """An edit to the Dask engine or Dask training reruns only the stages that use them."""
    declared = [d for d in STAGES[stage]["deps"] if d.startswith("src/")]
    assert not [d for d in declared if "scaleout" in d]


def test_importing_a_library_module_loads_neither_dask_nor_the_web_stack():
    """Optional engines are imported where they are used: loading the model code or the
    pipeline's libraries pulls in neither Dask nor FastAPI."""
    code = (
        "import sys, fraudlab.modeling.pipeline, fraudlab.modeling.artifact, "
        "fraudlab.features.online, fraudlab.data.validate, fraudlab.monitoring.weekly, "
        "fraudlab.scaleout.engine, fraudlab.cli; "
        "print(sorted(m for m in ('dask', 'distributed', 'fastapi', 'uvicorn') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
