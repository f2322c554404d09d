"""No module of ours reaches into another's private names.

A leading underscore says "this module's own business": it may change with no notice.
When another module needs it, it is public in the module where it belongs (in its
``__all__``, with a docstring). This test parses every module of evproto/, daemons/,
hw/ and firmware_sim/ with ``ast`` (nothing is imported) and fails on
``from X import _name`` and on ``X._name`` where X is another of our modules.
Dunders (``__version__``) are public by convention.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Source folder -> the package it is installed as (daemons/, hw/ and firmware_sim/ live inside evproto).
TREES = {"evproto": "evproto", "daemons": "evproto.daemons", "hw": "evproto.hw", "firmware_sim": "evproto.firmware_sim"}
#: (importing module, imported module, name) allowed to break the rule, each with its reason. Keep it empty.
ALLOWED: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of ours: dotted name -> (file, is a package's ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for folder, package in TREES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            if folder == "evproto" and rel.parts[0] == "hw":  # a link to hw/, walked as itself
                continue
            parts = [package, *rel.with_suffix("").parts]
            is_init = parts[-1] == "__init__"
            if is_init:
                parts.pop()
            found[".".join(parts)] = (path, is_init)
    return found


MODULES = _modules()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(importer: str, is_init: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_init else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _chain(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything that is not names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def private_uses(importer: str) -> Iterator[tuple[int, str, str]]:
    """(line, other module, private name) for each reach into another module's private names."""
    path, is_init = MODULES[importer]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bound: dict[str, str] = {}  # local name -> the module of ours it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(importer, is_init, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # a module: its attributes are checked below
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif source in MODULES and source != importer and _private(alias.name):
                    yield node.lineno, source, alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain = _chain(node.value)
        if not chain or chain[0] not in bound:
            continue
        owner = ".".join([bound[chain[0]], *chain[1:]])
        if owner in MODULES and owner != importer:
            yield node.lineno, owner, node.attr


def test_the_walk_sees_every_tree() -> None:
    for module in (
        "evproto.link",
        "evproto.bus.client",
        "evproto.daemons.central.panel",
        "evproto.hw.supervisor",
        "evproto.firmware_sim.cli",
    ):
        assert module in MODULES, module


def test_no_module_imports_another_modules_private_names() -> None:
    findings = [
        f"{MODULES[importer][0].relative_to(ROOT)}:{line}: {owner}.{name}"
        for importer in sorted(MODULES)
        for line, owner, name in private_uses(importer)
        if (importer, owner, name) not in ALLOWED
    ]
    assert not findings, "private names of another module (make them public where they are defined):\n" + "\n".join(
        findings
    )


def test_the_check_finds_both_forms(tmp_path: Path) -> None:
    """The checker itself: a module that does both is caught, twice."""
    MODULES["evproto.daemons.central._probe"] = (tmp_path / "probe.py", False)
    try:
        (tmp_path / "probe.py").write_text(
            "from .panel import _hidden, render\nfrom evproto.bus import client\nimport evproto.link as link\n"
            "client._secret()\nlink.LinkConnection\nlink._table\n",
            encoding="utf-8",
        )
        found = sorted(private_uses("evproto.daemons.central._probe"))
        assert found == [
            (1, "evproto.daemons.central.panel", "_hidden"),
            (4, "evproto.bus.client", "_secret"),
            (6, "evproto.link", "_table"),
        ]
    finally:
        del MODULES["evproto.daemons.central._probe"]
