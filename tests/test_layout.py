"""The package layout: the math a learner reads (nn, processes) apart from the machinery, dependencies
pointing one way, every module named in docs/architecture.md, and ``import npdiff`` light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "npdiff"

# a module may import from its own level, or from a level with a smaller number; "leaf" modules import
# nothing of npdiff but the backend (and leaves), so anyone may use them
LEVEL = {"backend": 0, "data": 0, "metrics": 0, "io": 0, "nn": 1, "processes": 2, "training": 3, "images": 3,
         "diffusion": 4, "cli": 5, "__init__": 5, "__main__": 6}
CORE = ("nn", "processes")  # numpy only: no figures, no files, no command line


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def group(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def npdiff_imports(path: Path) -> set[str]:
    """The first component under npdiff of every npdiff module this file imports (``nn``, ``data``, …)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "npdiff":
            parts = node.module.split(".")[1:]
            found.update([parts[0]] if parts else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("npdiff."))
    return found


def third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_point_one_way(path):
    own = group(path)
    for used in npdiff_imports(path):
        assert used in LEVEL, f"{path.relative_to(ROOT)} imports npdiff.{used}, which has no level here"
        if used != own:
            assert LEVEL[used] < LEVEL[own] or LEVEL[used] == 0, (
                f"{path.relative_to(ROOT)} ({own}) imports npdiff.{used}, a higher level")


@pytest.mark.parametrize("path", [p for p in modules() if group(p) in CORE], ids=lambda p: p.name)
def test_the_core_imports_numpy_only(path):
    outside = third_party_imports(path) - set(sys.stdlib_module_names) - {"numpy", "npdiff", "__future__"}
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"
    assert not npdiff_imports(path) & {"io", "images", "training", "cli", "diffusion"}


def test_docs_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in modules()
               if str(p.relative_to(ROOT)) not in text and p.name != "__init__.py"]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_import_npdiff_loads_neither_the_image_judge_nor_the_command_line():
    code = ("import sys, npdiff; print(sorted(m for m in sys.modules "
            "if m.startswith(('npdiff.images', 'npdiff.cli', 'matplotlib', 'imageio'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
