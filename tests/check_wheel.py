"""Run by ``nox -s package`` in a venv where only the built wheel is installed: the wheel maps
everything under ``adagc``, ships py.typed and the goldens, and every public module imports."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.resources
import os
import pkgutil
import sys
import zipfile

# Run as a script, this file's folder heads sys.path, where the per-framework test packages
# (tests/paddle, tests/torch, ...) would shadow the frameworks themselves.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

OPTIONAL = {
    "torch",
    "transformers",
    "lightning",
    "zclip",
    "jax",
    "optax",
    "paddle",
    "cupy",
    "tensorflow",
    "keras",
    "matplotlib",
    "tqdm",
    "pytest",
    "hypothesis",
}


def main(wheel: str) -> int:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"adagc"}, f"wheel installs top-level {sorted(tops)}; only 'adagc' is allowed"
    assert "adagc/py.typed" in names, "py.typed missing"
    assert any(n.startswith("adagc/conformance/goldens/") and n.endswith(".json") for n in names)
    assert "adagc/backends/_cuda/adagc_kernels.cu" in names, "the CUDA source is missing"
    eps = {e.name: e.value for e in md.entry_points(group="pytest11")}
    assert eps.get("adagc_conformance") == "adagc.conformance.plugin", eps
    import adagc

    assert "site-packages" in adagc.__file__, f"imported from {adagc.__file__}, not the wheel"
    from adagc.backends import _cupy_plan

    # The fast path reads its kernels from package data (no CuPy needed to find them).
    cu = importlib.resources.files("adagc.backends").joinpath("_cuda/adagc_kernels.cu")
    assert "adagc_sumsq" in cu.read_text() and _cupy_plan.compile_defines()
    imported, skipped = [], []
    for mod in pkgutil.walk_packages(adagc.__path__, "adagc."):
        if mod.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(mod.name)
            imported.append(mod.name)
        except ImportError as exc:  # modules of frameworks this venv has not installed
            missing = (exc.name or "").split(".")[0]
            if missing not in OPTIONAL:
                raise
            skipped.append(f"{mod.name} (needs {missing})")
    print(f"imported {len(imported)} modules from the wheel: {', '.join(imported)}")
    if skipped:
        print(f"skipped (optional framework not installed): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
