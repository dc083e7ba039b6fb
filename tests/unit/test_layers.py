"""The package's layers: imports point one way (docs/design.md "Layers"), and nothing cycles.

Every import counts, also one inside a function (a lazy import is still a dependency). The rule
is checked on the source text, so it holds whether or not an optional runtime is installed.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Lowest first. A module may import from a strictly lower layer, or from inside its own
# top-level unit (the same subpackage or module). train and export sit beside the Detector,
# above the runtime they both use; evaluation and stream use the Detector; the CLI uses all.
LAYERS: List[Tuple[str, ...]] = [
    ("version", "config", "fileio", "parsing", "_C"),
    ("result", "preprocess", "gmm", "model", "data"),
    ("postprocess", "overlay"),
    ("calibrate",),
    ("artifact",),
    ("runtime",),
    ("detector", "train", "export"),
    ("evaluation", "stream"),
    ("cli",),
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}
FACADE = "hgad_edge"  # hgad_edge/__init__.py: the public API, lazily re-exports every layer
NATIVE = "hgad_edge._C"  # the compiled extension (no .py source)


def _modules() -> Dict[str, str]:
    """module name → file, for hgad_edge/ and export/ (= hgad_edge.export)."""
    out = {}
    for top, prefix in (("hgad_edge", "hgad_edge"), ("export", "hgad_edge.export")):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(d, f), os.path.join(ROOT, top))[:-3].replace(os.sep, ".")
                name = prefix + ("" if rel == "__init__" else "." + rel.replace(".__init__", ""))
                out[name] = os.path.join(d, f)
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an import of ``name`` loads (``hgad_edge.data.read_image`` → ``hgad_edge.data``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: str) -> Set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names if a.name.startswith("hgad_edge")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("hgad_edge"):
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES or full == NATIVE else _resolve(base))
    out.discard(module)
    return {m for m in out if m in MODULES or m == NATIVE}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _unit(module: str) -> str:
    """The layer unit of a module: its top-level subpackage or module; a ``__main__`` is an entry
    point (``python -m hgad_edge.train``), a command-line shell like the CLI."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else FACADE


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {FACADE}
    assert units <= set(RANK), f"modules outside every layer: {sorted(units - set(RANK))} (add them to LAYERS)"


def test_imports_point_down_the_layers():
    bad = []
    for a, deps in GRAPH.items():
        if a == FACADE:
            continue
        for b in deps:
            ua, ub = _unit(a), _unit(b)
            if ub == FACADE:
                bad.append(f"{a} imports the facade hgad_edge (import the module that defines the name)")
            elif ua != ub and RANK[ub] >= RANK[ua]:
                bad.append(f"{a} (layer {RANK[ua]}) imports {b} (layer {RANK[ub]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = {m: d for m, d in GRAPH.items() if m != FACADE}
    assert _cycles(graph) == []


def test_the_checker_catches_a_cycle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    # the real graph: the Detector does use the runtime (so the rule is not vacuous) …
    assert "hgad_edge.runtime.registry" in GRAPH["hgad_edge.runtime"]
    assert any(d.startswith("hgad_edge.runtime") for d in GRAPH["hgad_edge.detector"])
    # … and nothing below the Detector may import it
    assert RANK[_unit("hgad_edge.detector")] > RANK[_unit("hgad_edge.runtime.scorer")]


def test_the_detector_needs_no_build_side():
    """The runtime layer and the Detector import nothing from hgad_edge.export."""
    def reach(start: str) -> Set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += GRAPH.get(m, ())
        return seen

    build = sorted(m for m in reach("hgad_edge.detector") | reach("hgad_edge.stream") if m.startswith("hgad_edge.export"))
    assert build == []


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.endswith("__init__.py")))
def test_every_package_says_what_it_is(package):
    doc = ast.get_docstring(ast.parse(open(MODULES[package], encoding="utf-8").read()))
    assert doc and doc.strip(), f"{package} has no docstring"


@pytest.mark.parametrize("argv", [["--help"], ["make-demo-data", "--help"], ["train", "--help"],
                                  ["export", "--help"], ["stream", "--help"]])
def test_help_imports_no_torch(argv):
    """`hgad-edge … --help` builds the parser only: no torch, timm, onnxruntime (measured: 1.8 s → 0.25 s)."""
    import subprocess
    import sys

    code = ("import sys\nfrom hgad_edge.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'timm', 'onnxruntime', 'skimage', 'tensorrt') if m in sys.modules]\n"
            "print(heavy)\nsys.exit(1 if heavy else 0)\n") % (argv,)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-2000:]
    assert "usage:" in r.stdout
