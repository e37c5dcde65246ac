"""The layer rules of docs/architecture.md, checked on the source's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("orchestrator", "channels", "routing", "health", "config")
# The processes' entry points sit above the API: they build it and serve it.
ENTRY = {"orchestrator.__main__", "orchestrator.server", "orchestrator.worker", "orchestrator.supervisor",
         "orchestrator.launch", "orchestrator.demo"}
# What may never run inside a pure module: I/O, time, randomness, tasks.
IMPURE = {"asyncio", "aiohttp", "socket", "time", "random", "secrets", "os", "subprocess", "sqlite3", "asyncpg",
          "threading", "uvloop", "structlog", "prometheus_client"}
PURE = ("routing", "orchestrator.transitions", "orchestrator.model")
BELOW_CORE = ("channels", "routing", "health", "config")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str, modules: set[str]) -> list[str]:
    """Every module ``path`` imports, absolute, also inside functions; not those only
    imported for type checking (they never run)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found += subs or [base]
    return found


def inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def package_of(module: str) -> str:
    """The package a module belongs to: its parent (a package's own name for one)."""
    return module.rpartition(".")[0]


def violations(root: Path) -> list[str]:
    mods = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    out = []
    for name, path in sorted(mods.items()):
        own_package = name if name in packages else package_of(name)
        for target in imports(path, name, set(mods)):
            top = target.split(".")[0]
            if inside(name, PURE) and (top in IMPURE or inside(name, ("routing",)) and top in
                                       ("orchestrator", "channels", "health", "config")):
                out.append(f"{name} is pure and imports {target}")
            if inside(name, BELOW_CORE) and top == "orchestrator":
                out.append(f"{name} is below the core and imports {target}")
            if inside(target, ("orchestrator.api",)) and not inside(name, ("orchestrator.api",)) \
                    and name not in ENTRY:
                out.append(f"{name} imports the API ({target})")
            private = [i for i, part in enumerate(target.split(".")) if part.startswith("_") and part != "__main__"]
            if private:
                owner = ".".join(target.split(".")[: private[0]])
                if target in mods or ".".join(target.split(".")[: private[0] + 1]) in mods:
                    if not (own_package == owner or own_package.startswith(owner + ".")):
                        out.append(f"{name} imports {target}, private to {owner}")
    return sorted(set(out))


def test_the_source_keeps_the_layer_rules() -> None:
    assert violations(ROOT) == []


def loaded_at_import(module: str, root: Path = ROOT) -> set[str]:
    """Every module importing ``module`` loads, ours and others' (top-level names),
    following only imports that run at import time (not those inside functions)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = root / name.replace(".", "/") / "__init__.py"
        if not path.exists():
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages run first
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                todo += [base, *(f"{base}.{a.name}" for a in node.names)]
    return seen


def test_the_sqlite_writer_process_stays_lean() -> None:
    # It runs beside every server: pydantic, the config schema or the pricing there cost
    # the process tens of megabytes (docs/performance.md#writer-start-up).
    loaded = loaded_at_import("orchestrator.journal._sqlite_writer")
    assert "orchestrator.journal._sqlite_writer" in loaded and "orchestrator.model" in loaded
    heavy = {"pydantic", "config", "aiohttp", "asyncpg", "orchestrator.pricing", "orchestrator.service"}
    assert not {m for m in loaded if m.split(".")[0] in heavy or m in heavy}


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("routing/_bad.py", "import asyncio", "routing._bad is pure and imports asyncio"),
    ("routing/_bad.py", "from orchestrator.model import Recharge",
     "routing._bad is pure and imports orchestrator.model"),
    ("orchestrator/transitions_bad.py", "import time", None),
    ("orchestrator/driver_bad.py", "from orchestrator.api.errors import ApiError",
     "orchestrator.driver_bad imports the API (orchestrator.api.errors)"),
    ("orchestrator/pricing_bad.py", "from orchestrator.journal._totals import month_of",
     "orchestrator.pricing_bad imports orchestrator.journal._totals, private to orchestrator.journal"),
    ("health/bad.py", "from orchestrator.clock import Clock", "health.bad is below the core and imports orchestrator.clock"),
])
def test_a_deliberate_violation_is_caught(tmp_path: Path, module: str, line: str, expected: str | None) -> None:
    """A copy of the source with one bad module added: the rule names it (and nothing
    else is found)."""
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            dest = tmp_path / p.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(p.read_text())
    (tmp_path / module).write_text(line + "\n")
    found = violations(tmp_path)
    if expected is None:  # a module merely named like a pure one is not one
        assert found == []
    else:
        assert expected in found and all(v.startswith(expected.split()[0] + " ") for v in found)
