"""The package imports one way (DESIGN.md, "Layout"): read every module's imports with `ast`
(lazy imports inside functions and TYPE_CHECKING blocks included) and fail on any cycle or
on an import against the layering, naming the modules and the line.

    cli -> build -> controller -> (evaluate, rollout, learner, scoring, weights, algorithms,
                                   data, checkpoint, logging, ...) -> envs -> types, config

`envs/` imports no rollout, learner or scoring code; `learner/` and `rollout/` never import
each other (weights travel through `weights/`); `types.py` imports nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nemo_rlvr"

LAYER = {"cli": 5, "build": 4, "controller": 3, "envs": 1, "types": 0, "config": 0}
"""Top-level part -> rank; every other part (rollout, learner, scoring, ...) is rank 2."""
MIDDLE = 2
FORBIDDEN = {
    ("learner", "rollout"), ("rollout", "learner"),
    ("weights", "learner"), ("weights", "rollout"), ("weights", "scoring"),
    ("scoring", "rollout"), ("scoring", "learner"), ("scoring", "weights"),
}
"""Pairs of rank-2 parts that must not import each other (in the direction given)."""


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported nemo_rlvr module, line)], resolved to modules that exist."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod when it is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import a.b.C` names a class: its module is a.b
                    t = t.rpartition(".")[0]
                if t.startswith("nemo_rlvr.") and t != name and (t, node.lineno) not in edges:
                    edges.append((t, node.lineno))
        graph[name] = edges
    return graph


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, []):
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


def part(module: str) -> str:
    """nemo_rlvr.scoring.pool -> scoring; nemo_rlvr.types -> types; nemo_rlvr -> ''."""
    return module.split(".")[1] if "." in module else ""


def violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for src, edges in sorted(graph.items()):
        a = part(src)
        if not a:
            continue
        for dst, line in edges:
            b = part(dst)
            if a == b or not b:
                continue
            ra, rb = LAYER.get(a, MIDDLE), LAYER.get(b, MIDDLE)
            if rb > ra or (ra == rb and (ra != MIDDLE or (a, b) in FORBIDDEN)):
                bad.append(f"{src} (line {line}) imports {dst}: {a} may not import {b}")
    return bad


def test_the_package_has_no_import_cycle():
    found = cycles(read_imports())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_every_import_points_down():
    bad = violations(read_imports())
    assert not bad, "\n".join(bad)


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself can fail: a planted cycle and upward imports are reported."""
    pkg = tmp_path / "nemo_rlvr"
    for sub in ("envs", "learner", "rollout"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "types.py").write_text("")
    (pkg / "envs" / "base.py").write_text("def f():\n    from nemo_rlvr.learner import policy\n")
    (pkg / "learner" / "policy.py").write_text("from ..rollout.hf import Gen\n")
    (pkg / "rollout" / "hf.py").write_text("import nemo_rlvr.types\nfrom nemo_rlvr.learner import policy\n")
    graph = read_imports(pkg)
    assert graph["nemo_rlvr.envs.base"] == [("nemo_rlvr.learner.policy", 2)]
    assert graph["nemo_rlvr.learner.policy"] == [("nemo_rlvr.rollout.hf", 1)]
    assert cycles(graph) == [["nemo_rlvr.learner.policy", "nemo_rlvr.rollout.hf"]]
    assert violations(graph) == [
        "nemo_rlvr.envs.base (line 2) imports nemo_rlvr.learner.policy: envs may not import learner",
        "nemo_rlvr.learner.policy (line 1) imports nemo_rlvr.rollout.hf: learner may not import rollout",
        "nemo_rlvr.rollout.hf (line 2) imports nemo_rlvr.learner.policy: rollout may not import learner",
    ]


@pytest.mark.parametrize("module", ["nemo_rlvr.types"])
def test_leaf_modules_import_nothing_of_ours(module):
    assert read_imports()[module] == []
