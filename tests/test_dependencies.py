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
