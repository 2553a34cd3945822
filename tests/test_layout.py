"""The package's layering, held to the rule written at the top of ``continuum/__init__.py``.

The imports are read from the source (``ast``), every one of them: at module level, inside
functions, under ``TYPE_CHECKING``. Three rules:

* a layer imports only its own modules and the layers the rule lists for it;
* no modules import each other in a circle;
* the sans-IO layers import neither trio (nor trio-websocket) nor any module of the package
  that does, however indirectly.

And one habit that keeps the layers honest: no code reaches into another object's
``_private`` attributes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "continuum"
FACE = "the face"
#: Layers of plain functions and classes: no event loop, directly or through an import.
SANS_IO = frozenset({"core", "config", "apis", "observability"})
#: Third-party modules that are an event loop's I/O.
TRIO_MODULES = frozenset({"trio", "trio_websocket"})
#: Underscore names that are public API of their types (namedtuple's).
PUBLIC_UNDERSCORED = frozenset({"_replace", "_asdict", "_fields", "_make"})


def module_name(path: Path) -> str:
    parts = ["continuum", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    """The folder a module lives in; the face for the package's own files."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return FACE  # continuum/__init__.py, __main__.py, cli.py, mock.py


def written_rule() -> dict[str, frozenset[str]]:
    """``layer -> layers it may import``, from the comment at the top of __init__.py."""
    text = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    rule: dict[str, frozenset[str]] = {}
    for layer, allowed in re.findall(r"^#   (\w+(?: \w+)?)\s+imports (.+)$", text, re.M):
        if allowed == "nothing of continuum":
            rule[layer] = frozenset()
        elif allowed == "anything":
            rule[layer] = frozenset({"*"})
        else:
            rule[layer] = frozenset(name.strip() for name in allowed.split(","))
    return rule


RULE = written_rule()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``module``'s source: a name imported
    from a package is the submodule of that name when there is one."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield (submodule if submodule in MODULES else target), node.lineno


GRAPH: dict[str, set[str]] = {
    module: {target for target, _ in imports_of(module) if target in MODULES}
    for module in MODULES
}


def test_the_rule_is_written_for_every_layer() -> None:
    layers = {layer_of(module) for module in MODULES}
    assert layers == set(RULE), "a layer without a line in the rule, or a line for none"
    for layer, allowed in RULE.items():
        assert allowed <= set(RULE) | {"*"}, f"{layer}: unknown layer in {sorted(allowed)}"
    assert set(RULE) >= SANS_IO


def test_every_import_follows_the_rule() -> None:
    broken = []
    for module in MODULES:
        layer = layer_of(module)
        allowed = RULE[layer]
        for target, line in imports_of(module):
            if target not in MODULES and not target.startswith("continuum."):
                continue
            target_layer = layer_of(target)
            if target_layer == layer or "*" in allowed or target_layer in allowed:
                continue
            broken.append(f"{MODULES[module].relative_to(PACKAGE)}:{line}: {layer} imports "
                          f"{target} ({target_layer})")
    assert not broken, "imports the layering does not allow:\n" + "\n".join(broken)


def test_no_import_cycles() -> None:
    """Strongly connected components of the import graph (Tarjan): each must be a single
    module that does not import itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(GRAPH[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other in a circle: {cycles}"


def _reaches_trio(module: str, seen: set[str]) -> list[str] | None:
    """A chain of imports from ``module`` to trio, or None."""
    if module in seen:
        return None
    seen.add(module)
    for target, _ in imports_of(module):
        if target.split(".")[0] in TRIO_MODULES:
            return [module, target]
        if target in MODULES:
            chain = _reaches_trio(target, seen)
            if chain is not None:
                return [module, *chain]
    return None


@pytest.mark.parametrize("layer", sorted(SANS_IO))
def test_sans_io_layers_never_reach_trio(layer: str) -> None:
    chains = []
    for module in MODULES:
        if layer_of(module) == layer:
            chain = _reaches_trio(module, set())
            if chain is not None:
                chains.append(" -> ".join(chain))
    assert not chains, f"{layer} is sans-IO, but:\n" + "\n".join(chains)


def test_the_checks_see_what_they_guard() -> None:
    """The readers above are not vacuous: they find the imports and layers they police."""
    assert len(MODULES) > 60 and layer_of("continuum.cli") == FACE
    assert layer_of("continuum.core.sse") == "core"
    assert layer_of("continuum.net.client.h2") == "net"
    assert "continuum.core.sse" in GRAPH["continuum.actors.proxy"]
    assert "continuum.testing._tools" in GRAPH["continuum.testing._openai"]  # from . import
    assert _reaches_trio("continuum.actors.proxy", set()) is not None
    assert RULE["core"] == frozenset() and RULE[FACE] == frozenset({"*"})


def test_nothing_reaches_into_another_objects_private_state() -> None:
    """``x._name`` only on ``self``, ``cls``, a module or ``super()``."""
    found = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.asname or alias.name.split(".")[0]
                    for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                    for alias in node.names}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in PUBLIC_UNDERSCORED):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls", *imported}:
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private state reached from outside:\n" + "\n".join(found)
