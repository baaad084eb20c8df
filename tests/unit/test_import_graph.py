"""The house's structure (issue 13), proved on the import graph of the source — every import,
at module top or inside a function, read with ``ast``:

- no import cycle anywhere;
- the ground floor (``spatial_api``) imports no room (rooms plug in through entry points);
- no module uses another package's ``_private`` name;
- every package imports alone, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROUND = "spatial_api"
ROOMS = ("tiling", "styles", "land_supervision", "cim_builder", "web", "data", "sensing", "underground", "topology")
PACKAGES = (GROUND, *ROOMS)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "migrations" in path.parts:  # alembic loads these by path
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path):
    """(imported module, names taken from it) for every import statement of ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            for n in submodules:
                yield f"{base}.{n}", ()
            attributes = [n for n in names if n not in submodules]
            if attributes or not submodules:
                yield base, tuple(attributes)


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            t = _resolve(target)
            if t and t != module:
                g[module].add(t)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_walker_sees_what_it_should():
    g = graph()
    # known edges, so that a walker that sees nothing cannot pass the tests below
    assert "spatial_api.config" in g["spatial_api.app"]
    assert "spatial_api.store" in g["tiling.vector"]
    assert "spatial_api.ogc.cql2" in g["spatial_api.ogc.features"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join("  " + " ↔ ".join(c) for c in found)


def test_the_ground_floor_imports_no_room():
    upward = sorted(f"{m} → {t}" for m, ts in graph().items() if m.split(".")[0] == GROUND
                    for t in ts if t.split(".")[0] in ROOMS)
    assert not upward, "spatial_api imports rooms (declare them as entry points instead):\n  " + "\n  ".join(upward)


def test_no_private_name_across_packages():
    crossing = []
    for module, path in MODULES.items():
        for target, names in _imports(module, path):
            t = _resolve(target)
            if not t or t.split(".")[0] == module.split(".")[0]:
                continue
            crossing += [f"{module} imports {n} from {t}" for n in names if n.startswith("_")]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package):
    # a fresh interpreter: an import that only works after another package was loaded fails here
    mods = sorted(m for m in MODULES if m.split(".")[0] == package and not m.endswith("__main__"))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
