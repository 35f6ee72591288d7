"""The dependency direction of docs/architecture.md: which frameworks each package may pull in.

A torch-only user must not need jax, a jax-only user must not need torch, and the framework-free
packages import neither.  Each import runs in a fresh interpreter, so nothing is preloaded.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("jax", "flax", "torch", "transformers")

ALLOWED = {
    "spec": (),
    "tasks": (),
    "training": (),
    "analysis": (),
    "parity.report": (),
    "jax_model": ("jax", "flax"),
    "torch_model": ("torch",),
    "hf_bridge": ("torch", "transformers"),
}


@pytest.mark.parametrize("package", list(ALLOWED))
def test_package_imports_only_its_frameworks(package):
    code = (f"import sys, {package}; "
            f"print(' '.join(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert set(out) <= set(ALLOWED[package]), f"{package} imported {sorted(set(out))}"
    for needed in ALLOWED[package][:1]:
        assert needed in out  # the check can see an import when one happens


def test_no_module_imports_one_that_imports_it_back():
    """The project's imports, at module level or inside functions, form no cycle between
    modules (package __init__ files aside): torch_model's model.py and canonical.py used to
    import each other."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    packages = ["spec", "tasks", "training", "jax_model", "torch_model", "hf_bridge", "parity",
                "analysis", "lab_cli"]
    files = {(f"{p}.{f.stem}" if f.stem != "__init__" else p): f
             for p in packages for f in (root / p).glob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = package + (f".{node.module}" if node.module else "")
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name and d not in packages}

    def cycle_from(start, node, seen):
        for dep in graph[node]:
            if dep == start:
                return [start, node]
            if dep not in seen:
                seen.add(dep)
                found = cycle_from(start, dep, seen)
                if found:
                    return [*found[:1], node, *found[1:]]
        return None

    cycles = [c for n in graph if (c := cycle_from(n, n, {n}))]
    assert not cycles, cycles
