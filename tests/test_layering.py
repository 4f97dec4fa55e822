"""Layering: the library below the recipes never imports them, and recipes share only public names.

Rules checked on every module under ``deepafx/`` (imports read with ``ast``,
including those inside functions, relative imports resolved, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name):

1. Only the recipes themselves (``deepafx/recipes/**``) and the command line on
   top of them (``deepafx/cli.py``, ``deepafx/commands/**``) import
   ``deepafx.recipes``.
2. A recipe imports no ``_``-prefixed name (module or attribute) of another
   recipe; what two recipes share lives below them (``deepafx.data``,
   ``deepafx.metrics`` …) under a public name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "deepafx"
RECIPES = f"{PACKAGE}.recipes"
#: Files (relative to the repository root, POSIX) allowed to import the recipes besides the recipes themselves.
ABOVE_RECIPES = ("deepafx/cli.py", "deepafx/commands/")


@dataclass(frozen=True)
class Import:
    """One import: the line, the module imported from, and the names taken from it (empty for ``import m``)."""

    line: int
    module: str
    names: tuple[str, ...] = ()

    def targets(self) -> list[str]:
        """Dotted names this import may load: the module and ``module.name`` for each name."""
        return [self.module] + [f"{self.module}.{n}" for n in self.names if n != "*"]


def module_name(rel_path: str) -> str:
    """Dotted module name of a file path relative to the repository root (``a/b/__init__.py`` → ``a.b``)."""
    parts = rel_path[:-3].split("/") if rel_path.endswith(".py") else rel_path.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _literal_import_call(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in ("import_module", "__import__") and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def read_imports(source: str, rel_path: str) -> list[Import]:
    """Every import in a module's source, at any depth, relative ones made absolute.

    Args:
        source: Python source text.
        rel_path: The file's path relative to the repository root (``deepafx/x/y.py``),
            which resolves relative imports.

    Returns:
        The imports in source order.

    Raises:
        SyntaxError: the source does not parse.
    """
    tree = ast.parse(source, filename=rel_path)
    module = module_name(rel_path)
    package = module if rel_path.endswith("__init__.py") else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(Import(node.lineno, target, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Call):
            name = _literal_import_call(node)
            if name is not None:
                found.append(Import(node.lineno, name))
    return sorted(found, key=lambda i: i.line)


def _is_recipes(name: str) -> bool:
    return name == RECIPES or name.startswith(RECIPES + ".")


def _recipe_of(dotted: str) -> str | None:
    """The recipe a dotted module name belongs to (``deepafx.recipes.<recipe>...``), or None."""
    parts = dotted.split(".")
    return parts[2] if len(parts) > 2 and _is_recipes(dotted) else None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str, rel_path: str) -> list[str]:
    """Breaches of both layering rules in one module, as ``path:line: message`` strings.

    Args:
        source: Python source text.
        rel_path: The file's path relative to the repository root (POSIX).

    Returns:
        One string per offending imported name (empty when the module is clean).
    """
    in_recipes = rel_path.startswith("deepafx/recipes/")
    may_import_recipes = in_recipes or rel_path.startswith(ABOVE_RECIPES)
    own_recipe = _recipe_of(module_name(rel_path)) if in_recipes else None
    out = []
    for imp in read_imports(source, rel_path):
        if not may_import_recipes:
            for target in imp.targets():
                if _is_recipes(target):
                    out.append(f"{rel_path}:{imp.line}: imports {target} (only deepafx/recipes/**, deepafx/cli.py "
                               f"and deepafx/commands/** may import the recipes; move what is shared below them)")
                    break
        if own_recipe is not None:
            other = _recipe_of(imp.module)  # None: the registry package deepafx.recipes itself, or no recipe
            if other is None or other == own_recipe:
                continue
            module_parts = imp.module.split(".")[2:]
            for part in module_parts:
                if _private(part):
                    out.append(f"{rel_path}:{imp.line}: imports private module {imp.module} of recipe {other!r}")
                    break
            else:
                for name in imp.names:
                    if _private(name):
                        out.append(f"{rel_path}:{imp.line}: imports private name {name} from {imp.module} "
                                   f"(recipe {other!r}); share it under a public name below the recipes")
    return out


def _package_files() -> list[Path]:
    return sorted((ROOT / PACKAGE).rglob("*.py"))


def _all_violations() -> list[str]:
    found = []
    for path in _package_files():
        rel = path.relative_to(ROOT).as_posix()
        found += violations(path.read_text(encoding="utf-8"), rel)
    return found


# --------------------------------------------------------------------------- the package
def test_the_package_keeps_both_rules():
    files = _package_files()
    assert len(files) > 30, f"found only {len(files)} modules under {ROOT / PACKAGE}"
    found = _all_violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_the_reader_sees_the_imports_that_are_allowed():
    """The scan is not vacuous: the command line's and the recipes' own recipe imports are read."""
    seen_cli = [i for p in (ROOT / PACKAGE / "commands").glob("*.py")
                for i in read_imports(p.read_text(encoding="utf-8"), p.relative_to(ROOT).as_posix())
                if any(map(_is_recipes, i.targets()))]
    assert seen_cli, "no deepafx.recipes import found in deepafx/commands; the reader misses imports"
    amp = ROOT / PACKAGE / "recipes" / "amp_emulation" / "data.py"
    mods = {i.module for i in read_imports(amp.read_text(encoding="utf-8"), amp.relative_to(ROOT).as_posix())}
    assert "deepafx.data.pieces" in mods


# --------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("rel_path, source, expected", [
    ("deepafx/trainer.py", "import deepafx.recipes\n", ["deepafx/trainer.py:1: imports deepafx.recipes "]),
    ("deepafx/data/x.py", "import os\n\n\ndef f():\n    from deepafx.recipes.mastering import music\n",
     ["deepafx/data/x.py:5: imports deepafx.recipes.mastering "]),
    ("deepafx/metrics.py", "from deepafx import recipes\n", ["deepafx/metrics.py:1: imports deepafx.recipes "]),
    ("deepafx/hosts/x.py", "from ..recipes import RECIPES\n", ["deepafx/hosts/x.py:1: imports deepafx.recipes "]),
    ("deepafx/x.py", "import importlib\nm = importlib.import_module('deepafx.recipes.dexed_matching')\n",
     ["deepafx/x.py:2: imports deepafx.recipes.dexed_matching "]),
    ("deepafx/recipes/amp_emulation/data.py",
     "from deepafx.recipes.mastering.music import _find_cached, list_candidates\n",
     ["deepafx/recipes/amp_emulation/data.py:1: imports private name _find_cached from "
      "deepafx.recipes.mastering.music"]),
    ("deepafx/recipes/amp_emulation/evaluate.py", "def f():\n    from ..mastering.evaluate import _finite as g\n",
     ["deepafx/recipes/amp_emulation/evaluate.py:2: imports private name _finite from "
      "deepafx.recipes.mastering.evaluate"]),
    ("deepafx/recipes/dexed_matching/x.py", "from deepafx.recipes.mastering._impl import thing\n",
     ["deepafx/recipes/dexed_matching/x.py:1: imports private module deepafx.recipes.mastering._impl"]),
    ("deepafx/recipes/dexed_matching/x.py", "from deepafx.recipes.mastering import _impl\n",
     ["deepafx/recipes/dexed_matching/x.py:1: imports private name _impl from deepafx.recipes.mastering"]),
])
def test_checker_flags_a_violation(rel_path, source, expected):
    found = violations(source, rel_path)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected):
        assert got.startswith(want), (got, want)


@pytest.mark.parametrize("rel_path, source", [
    ("deepafx/cli.py", "from deepafx.recipes import RECIPES\n"),
    ("deepafx/commands/train.py", "def f():\n    from ..recipes import get_recipe\n"),
    ("deepafx/recipes/__init__.py", "from deepafx.recipes.mastering import _x\n"),  # the registry is no recipe
    ("deepafx/recipes/amp_emulation/data.py", "from deepafx.recipes.amp_emulation.esr import _private\n"),
    ("deepafx/recipes/amp_emulation/data.py", "from .esr import _private\n"),
    ("deepafx/recipes/amp_emulation/data.py", "from deepafx.recipes.mastering.music import build_dataset\n"),
    ("deepafx/recipes/amp_emulation/data.py", "from deepafx.recipes import __version__, get_recipe\n"),
    ("deepafx/metrics.py", "from deepafx.data.pieces import _slug\nimport deepafx.recipesque\n"),
    ("deepafx/x.py", "'''Docs name deepafx.recipes.mastering.music; only imports count.'''\n"),
])
def test_checker_allows(rel_path, source):
    assert violations(source, rel_path) == []
