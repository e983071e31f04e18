"""Every kernel compiles through NVRTC with CuPy's own compiler flags, for sm_80 and sm_90,
without a GPU.

``cupy.RawModule(code=..., options=...)`` compiles through
``cupy._core.core.compile_with_cache(code, options, prepend_cupy_headers=False, ...)``, which
adds CuPy's include paths (CCCL, its own headers and the ``nvidia-cuda-runtime-cu12`` headers
with ``cuda_fp16.h``/``cuda_bf16.h``) and ``--std=c++17``, then ``-ftz=true``, the device's
``-arch=sm_XX`` and ``--device-as-default-execution-space``. These tests run exactly that
function with an explicit ``arch``; the only parts replaced are the two that need a device:
choosing the arch flag (CuPy's own function, unwrapped from its per-device cache) and loading
the resulting binary (the compiled bytes are captured just before).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

cupy = pytest.importorskip("cupy", reason="the kernels session installs adagc[cupy]")
compiler = pytest.importorskip("cupy.cuda.compiler")
core = pytest.importorskip("cupy._core.core")

from adagc.backends import _cupy_engine as engine  # noqa: E402
from adagc.backends._cupy_plan import KERNEL_NAMES  # noqa: E402

ARCHS = ["80", "90"]


class _Compiled(Exception):
    """Raised by the spy once NVRTC has produced the binary (loading it needs a device)."""


def _compile(monkeypatch: pytest.MonkeyPatch, arch: str, ptx: bool) -> dict[str, Any]:
    """Run CuPy's RawModule compile path for ``arch``; return the options and the binary."""
    got: dict[str, Any] = {}
    real = compiler._compile_using_nvrtc_no_warning
    choose_arch = compiler._get_arch_for_options_for_nvrtc.__wrapped__

    def spy(source: str, options: tuple[str, ...] = (), arch: Any = None, *a: Any, **k: Any):
        got["source"], got["options"], got["arch"] = source, options, arch
        got["binary"], _ = real(source, options, arch, *a, **k)
        raise _Compiled

    def arch_flag(arch: Any = None) -> tuple[str, str]:
        if ptx:  # what CuPy does with CUPY_COMPILE_WITH_PTX=1
            return f"-arch=compute_{arch}", "ptx"
        return choose_arch(arch)  # CuPy's own choice: -arch=sm_XX, cubin

    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")  # compile, never load from the disk cache
    monkeypatch.setattr(compiler, "_compile_using_nvrtc_no_warning", spy)
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", arch_flag)
    with pytest.raises(_Compiled):
        core.compile_with_cache(
            engine.source(),
            engine.nvrtc_options(),
            arch=arch,
            prepend_cupy_headers=False,  # as RawModule passes it
            backend="nvrtc",
        )
    return got


@pytest.mark.parametrize("arch", ARCHS)
def test_cubin_with_cupys_flags(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    got = _compile(monkeypatch, arch, ptx=False)
    opts = got["options"]
    assert got["arch"] == arch
    assert set(engine.nvrtc_options()) <= set(opts)
    assert "--std=c++17" in opts and "-ftz=true" in opts  # CuPy's own additions
    assert any(o.startswith("-I") and "cuda_runtime" in o for o in opts), opts
    binary = got["binary"]
    assert binary[:4] == b"\x7fELF", "NVRTC did not produce a cubin"
    for name in KERNEL_NAMES:
        assert name.encode() in binary, f"{name} missing from the sm_{arch} cubin"


@pytest.mark.parametrize("arch", ARCHS)
def test_ptx_keeps_denormals(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """PTX for compute_XX: every kernel is an entry point, and no float32 instruction of ours
    flushes denormals although CuPy compiles with -ftz=true (the inline-PTX helpers)."""
    got = _compile(monkeypatch, arch, ptx=True)
    assert "-ftz=true" in got["options"]
    text = got["binary"].decode() if isinstance(got["binary"], bytes) else got["binary"]
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", text))
    assert entries == set(KERNEL_NAMES)
    assert f".target sm_{arch}" in text
    arith = [ln.strip() for ln in text.splitlines() if re.search(r"\b(add|mul|div|sqrt)\.", ln)]
    assert arith, "no float arithmetic found in the PTX"
    assert not [ln for ln in arith if ".ftz" in ln]


def test_source_needs_the_planner_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA source has no defaults of its own: without the planner's -D options it fails
    to compile, so the Python planner and the kernels cannot drift apart."""
    monkeypatch.setattr(engine, "nvrtc_options", lambda: ())
    with pytest.raises(Exception, match="compile with the -D options"):
        _compile(monkeypatch, "80", ptx=True)


def test_raw_module_holds_the_shipped_source_and_options() -> None:
    """The one RawModule is built from the packaged .cu file with the planner's options
    (constructing it compiles nothing and needs no device)."""
    mod = engine.module()
    assert isinstance(mod, cupy.RawModule)
    assert mod.code == engine.source() and "adagc_sumsq" in mod.code
    assert mod.options == engine.nvrtc_options()
    assert engine.module() is mod
