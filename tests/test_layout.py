"""The project's layout rules, read from the source by an AST walk (imports inside functions count):
only the allowed top-level modules, no import circle, ``untils`` imports nothing of the top level
(modules and packages, the op packages included), no script imports another script, no import of
another package's private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = frozenset(
    {
        "train_on_GAICD",
        "train_on_CPC",
        "generate_pseudo_heatmap",
        "test",
        "crop",
        "pretrain_PIC",
        "prior_PIC",
        "finetune_PIC",
        "convert_PIC_data",
        "app",
    }
)
LIBRARY = frozenset(
    {"cropping_model", "pic_model", "cropping_dataset", "pic_dataset", "config_GAICD", "config_CPC", "config_PIC"}
)
BUILD_SCRIPT = "setup"
LEFT_OUT = frozenset({"build", "dist", ".git", ".venv", "venv"})


def project_files(root: Path) -> dict[str, Path]:
    """Every project .py file by its module name (``untils.cropper``, ``roi_align`` for a package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if any(part in LEFT_OUT or part.startswith(".") or part.endswith(".egg-info") for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """What ``path`` imports anywhere in it, relative imports resolved: ``(modules, members)``, the
    dotted names that are modules (``import a.b``, the ``a`` of ``from a import b``) and the
    ``a.b`` of ``from a import b`` (``b`` may be a module or a name in ``a``)."""
    modules, members = set(), set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            modules.add(source)
            members.update(f"{source}.{alias.name}" for alias in node.names)
    modules.discard("")
    return modules, members


def is_private(name: str) -> bool:
    """Whether a dotted name goes through a private part below its package (``a._b``, not ``__future__``)."""
    return any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])


def import_graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (the longest known prefix of each name)."""
    modules = project_files(root)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in set().union(*imported_names(path, module, path.name == "__init__.py")):
            parts = name.split(".")
            known = next(
                (".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None
            )
            if known is not None and known != module:
                targets.add(known)
        graph[module] = targets
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as ``[a, b, ..., a]``, or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node], _ = 1, path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        state[node], _ = 2, path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            circle = visit(start)
            if circle:
                return circle
    return []


def layout_problems(root: Path) -> list[str]:
    """Every broken layout rule in the project at ``root``, one line each."""
    modules = project_files(root)
    top_level = {name for name, path in modules.items() if "." not in name and path.parent == root}
    top_level_names = {name for name in modules if "." not in name}  # modules and packages
    problems = [
        f"{name}.py: a top-level module beyond the allowed ones"
        for name in sorted(top_level - SCRIPTS - LIBRARY - {BUILD_SCRIPT})
    ]
    circle = find_circle(import_graph(root))
    if circle:
        problems.append("import circle: " + " -> ".join(circle))
    for module, path in modules.items():
        imported_modules, members = imported_names(path, module, path.name == "__init__.py")
        heads = {name.split(".")[0] for name in imported_modules}
        if module.split(".")[0] == "untils":
            problems += [
                f"{module}: untils imports the top-level {head}"
                for head in sorted(heads & top_level_names - {"untils"})
            ]
        if module in SCRIPTS:
            problems += [f"{module}: a script imports the script {head}" for head in sorted(heads & SCRIPTS - {module})]
        private_modules = {name for name in imported_modules if is_private(name)}
        private_modules |= {name for name in members if name in modules and is_private(name)}
        problems += [
            f"{module}: imports {name}, a private module of {name.split('.')[0]}"
            for name in sorted(private_modules)
            if name.split(".")[0] != module.split(".")[0]
        ]
    return problems


def test_the_project_keeps_its_layout():
    assert layout_problems(REPO_ROOT) == []


@pytest.mark.parametrize(
    "files, expected",
    [
        (
            {"cropping_model.py": "import pic_model\n", "pic_model.py": "def load():\n    import cropping_model\n"},
            "import circle: cropping_model -> pic_model -> cropping_model",
        ),
        (
            {"untils/__init__.py": "", "untils/helper.py": "from cropping_model import CropOutput\n"},
            "untils.helper: untils imports the top-level cropping_model",
        ),
        (
            {
                "untils/__init__.py": "",
                "roi_align/__init__.py": "",
                "untils/heads.py": "def head():\n    from roi_align import RoIAlignAvg\n",
            },
            "untils.heads: untils imports the top-level roi_align",
        ),
        ({"crop.py": "def main():\n    from test import evaluate\n"}, "crop: a script imports the script test"),
        (
            {
                "untils/__init__.py": "",
                "roi_align/__init__.py": "",
                "roi_align/_core.py": "",
                "untils/ops.py": "from roi_align._core import kernel\n",
            },
            "untils.ops: imports roi_align._core, a private module of roi_align",
        ),
        ({"helpers.py": ""}, "helpers.py: a top-level module beyond the allowed ones"),
    ],
)
def test_each_rule_catches_its_break(tmp_path, files, expected):
    for name, text in {"cropping_model.py": "", "pic_model.py": "", "crop.py": "", "test.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert expected in layout_problems(tmp_path)


def test_third_party_private_modules_count_and_private_names_of_modules_do_not(tmp_path):
    (tmp_path / "crop.py").write_text("from torch._dynamo import config\nfrom tests_helpers import _in_ci\n")
    (tmp_path / "tests_helpers.py").write_text("_in_ci = False\n")
    problems = layout_problems(tmp_path)
    assert "crop: imports torch._dynamo, a private module of torch" in problems
    assert not any("_in_ci" in problem for problem in problems)
