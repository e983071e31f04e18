"""Sessions: ``nox`` runs everything that works without a GPU (the README's test command).

    nox -s lint typecheck tests package
    nox -s conformance                  # every backend row of CONFORMANCE below
    nox -s "conformance(backend='numpy')"
    nox -s torch distributed-torch paddle paddleformers jax distributed-jax cross-framework lab
    nox -s tensorflow                   # TensorFlow / Keras 3 (tests/tensorflow)
    nox -s kernels                      # the CUDA fast path without a GPU (NVRTC, planner, mirror)
    ADAGC_GPU=1 nox -s "conformance(backend='cupy')"   # on a machine with a GPU

Venvs are pip-based; ``constraints.txt`` pins the versions CI tests with. Rows marked
``gpu=True`` are added only with ``ADAGC_GPU=1`` (CI has no GPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")
RESULTS = ROOT / ".ci" / "results"
# Sessions run on the Python that runs nox (any of 3.10-3.13); CI pins its own with
# ADAGC_NOX_PYTHON=3.11 (.ci/run), the Python the tested framework builds are for.
PYTHON = os.environ.get("ADAGC_NOX_PYTHON") or None
GPU = os.environ.get("ADAGC_GPU") == "1"
# The oldest and newest supported Pythons, checked by ``compat`` when the machine has them.
COMPAT_PYTHONS = ("3.10", "3.13")

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


@dataclass(frozen=True)
class Pass:
    """One run of the suite: extra ``python -m adagc.conformance`` arguments and environment."""

    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Row:
    """One conformance row: a backend, the extra that installs it, and the suite's passes."""

    name: str
    backend: str
    extra: str
    passes: tuple[Pass, ...] = (Pass(),)
    gpu: bool = False


X64 = (("JAX_ENABLE_X64", "1"),)
TF32 = (("ADAGC_TF_DTYPES", "float32"),)

# Porting to a new framework = a backend module + one row here.
CONFORMANCE = [
    Row("numpy", "numpy", "test"),
    Row("torch", "torch", "torch,test"),
    Row("paddle", "paddle", "paddle,test"),
    # JAX: float32 as most users run it, again inside the user's own jax.jit, and float64
    # (which JAX has only with x64 enabled).
    Row("jax", "jax", "jax,test", (Pass(), Pass(("--jit",)), Pass(env=X64))),
    Row("cupy", "cupy", "cupy,test", gpu=True),
    # TensorFlow eagerly in its four float dtypes, and inside tf.function (jit_update, no XLA:
    # see docs/tensorflow.md) in float32, with the CPU-only build (the tensorflow-cpu extra).
    Row("tensorflow", "tensorflow", "tensorflow-cpu,test", (Pass(), Pass(("--jit",), TF32))),
]
ROWS = {r.name: r for r in CONFORMANCE if GPU or not r.gpu}


def install(session: nox.Session, extras: str, *more: str) -> None:
    """Install the project (editable) with ``extras`` under the CI constraints."""
    session.install("-c", CONSTRAINTS, "-e", f".[{extras}]", *more)


def junit(session: nox.Session, suffix: str = "") -> list[str]:
    """pytest arguments writing a JUnit file that .ci/run sums up."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in session.name + suffix)
    return [f"--junitxml={RESULTS / safe}.xml", "-o", "junit_family=xunit2"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("-c", CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the package (frameworks not installed here are typed as Any)."""
    install(session, "dev")
    session.run("mypy", "adagc_core", "backends", "adapters", "conformance", "bench", "lab")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The core's own tests: packaging, import hygiene, config, spike score, checkpoints,
    the porting example (array-api-strict) and the benchmark harness."""
    install(session, "dev")
    session.run("pytest", "tests/core", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(ROWS))
def conformance(session: nox.Session, backend: str) -> None:
    """The shared conformance suite for one backend row."""
    row = ROWS[backend]
    install(session, row.extra)
    for i, run in enumerate(row.passes):
        session.run(
            "python",
            "-m",
            "adagc.conformance",
            "--backend",
            row.backend,
            *run.args,
            "--",
            "-q",
            *junit(session, f"-{i}" if i else ""),
            *session.posargs,
            env=dict(run.env),
        )


@nox.session(python=PYTHON, name="torch")
def torch_adapter(session: nox.Session) -> None:
    """The PyTorch adapter: clip_/attach, checkpoints, GradScaler, torch.compile, optimizers."""
    install(session, "torch,test", "pytorch-optimizer")  # the peer compared in tests/torch
    session.run("pytest", "tests/torch", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON)
def integrations(session: nox.Session) -> None:
    """HF Trainer, Lightning and accelerate with tiny random-init GPT-2s: one-line callbacks,
    attach on wrapped optimizers, AdaGC state in optimizer.state_dict(), bit-identical
    resume, the double-clipping guards, logged metrics, bf16 and fp16 with GradScaler."""
    install(session, "transformers,lightning,test")
    session.run("pytest", "tests/integrations", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON, name="distributed-torch")
def distributed_torch(session: nox.Session) -> None:
    """Real torch.distributed (gloo, spawned ranks): DDP, FSDP2 exact/local, TP, DCP resume."""
    install(session, "torch,test")
    session.run("pytest", "tests/torch_distributed", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON)
def lab(session: nox.Session) -> None:
    """The spike lab: fault plans, bad arguments, and a smoke run of adagc-lab."""
    install(session, "lab,test")
    session.run("pytest", "tests/lab", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON)
def paddle(session: nox.Session) -> None:
    """PaddlePaddle: backend, ClipGradByAdaGC (parity with ClipGradByGlobalNorm, GradScaler,
    checkpoints, bad input), data/tensor parallel with real gloo processes; then the
    conformance suite once more on the accelerator code path, forced on the CPU."""
    install(session, "paddle,test")
    session.run("pytest", "tests/paddle", "-q", *junit(session), *session.posargs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    session.run(
        "python",
        "-m",
        "adagc.conformance",
        "--backend",
        "paddle",
        "--",
        "-q",
        f"--junitxml={RESULTS / 'paddle-device-path'}.xml",
        "-o",
        "junit_family=xunit2",
        env={"ADAGC_PADDLE_HOST_SKIP": "0"},
    )


@nox.session(python=PYTHON)
def paddleformers(session: nox.Session) -> None:
    """PaddleFormers Trainer + AdaGCCallback: a config-built Llama trains with the Trainer's
    LR schedule and resumes bit-identically (flex and unified checkpoints). Its own
    constraints: PaddleFormers needs NumPy 1 (see constraints-paddleformers.txt)."""
    session.install(
        "-c", str(ROOT / "constraints-paddleformers.txt"), "-e", ".[paddleformers,test]"
    )
    session.run("pytest", "tests/paddleformers", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON, name="jax")
def jax_adapter(session: nox.Session) -> None:
    """The optax adapter: the core's results, pytrees, one compilation, chain /
    apply_if_finite / MultiSteps / masked, tree_util + orbax + adagc/1 checkpoints, stats(),
    Flax (nnx.Optimizer, Linen TrainState), the example."""
    # orbax: the checkpointer JAX users use; flax: NNX and Linen, what they train with
    install(session, "jax,test", "orbax-checkpoint", "flax")
    session.run("pytest", "tests/jax", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON, name="distributed-jax")
def distributed_jax(session: nox.Session) -> None:
    """Sharded gradients on 4 host devices: NamedSharding under jit, shard_map exact / local,
    replicated leaves, a 2-D mesh, data parallel (tests/jax_distributed sets XLA_FLAGS)."""
    install(session, "jax,test")
    session.run("pytest", "tests/jax_distributed", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON, name="tensorflow")
def tensorflow_keras(session: nox.Session) -> None:
    """TensorFlow / Keras 3: IndexedSlices, update inside tf.function (no AutoGraph warning,
    'raise' refused clearly), jit_update ties and 'raise', XLA on small layouts, and
    docs/tensorflow.md as written (GradientTape loop, VariableState, model.fit)."""
    install(session, "tensorflow-cpu,test")
    session.run("pytest", "tests/tensorflow", "-q", *junit(session), *session.posargs)


@nox.session(python=PYTHON)
def kernels(session: nox.Session) -> None:
    """The CuPy CUDA fast path, checked without a GPU: every kernel compiles through NVRTC with
    CuPy's own flags for sm_80/sm_90, the host planner, the NumPy mirror of the kernels against
    the reference, and the CPU dispatch (torch fast_path switch, Paddle plug point). The GPU
    tests in tests/kernels skip here with their reason; tests/kernels/gpu_check.sh runs them."""
    install(session, "cupy,torch,paddle,test")
    session.run("pytest", "tests/kernels", "-q", "-rs", *junit(session), *session.posargs)


@nox.session(python=PYTHON, name="cross-framework")
def cross_framework(session: nox.Session) -> None:
    """The same gradients through the PyTorch, JAX/optax and Paddle adapters give the same
    result; an adagc/1 checkpoint moves a run between them."""
    install(session, "torch,jax,paddle,test")
    session.run("pytest", "tests/cross_framework", "-q", *junit(session), *session.posargs)


def find_python(version: str) -> str | None:
    """An interpreter for ``version`` on this machine: ``pythonX.Y`` on PATH that runs, or a
    pyenv install (whose shim answers only when that version is selected)."""
    candidates = [shutil.which(f"python{version}")]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in root.glob(f"{version}.*/bin/python{version}"))
    for exe in candidates:
        if exe and subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:
            return exe
    return None


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """The core's tests and the NumPy conformance row on the oldest and newest supported
    Pythons present (3.10 and 3.13); a missing one is skipped with a warning. The frameworks'
    tests run on CI's Python (see the README's install table)."""
    for version in COMPAT_PYTHONS:
        exe = find_python(version)
        if exe is None:
            session.warn(f"compat: no Python {version} on this machine; skipped")
            continue
        venv = Path(session.create_tmp()) / f"py{version}"
        session.run(exe, "-m", "venv", "--clear", str(venv), external=True)
        py = str(venv / "bin" / "python")
        session.run(
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            CONSTRAINTS,
            "-e",
            ".[test]",
            "array-api-strict",
            external=True,
        )
        suffix = "-" + version.replace(".", "")
        session.run(py, "-m", "pytest", "tests/core", "-q", *junit(session, suffix), external=True)
        session.run(py, "-m", "adagc.conformance.generate_goldens", "--check", external=True)
        session.run(
            py,
            "-m",
            "adagc.conformance",
            "--backend",
            "numpy",
            "--",
            "-q",
            *junit(session, suffix + "-conformance"),
            external=True,
        )


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build the wheel, install it (not editable) into this fresh venv, import every module."""
    session.install("-c", CONSTRAINTS, "build")
    dist = session.create_tmp()
    session.run("python", "-m", "build", "--wheel", "--outdir", dist)
    wheels = sorted(Path(dist).glob("adagc-*.whl"))
    session.install("-c", CONSTRAINTS, str(wheels[-1]))
    session.run("python", str(ROOT / "tests" / "check_wheel.py"), str(wheels[-1]))


nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "conformance",
    "torch",
    "integrations",
    "distributed-torch",
    "lab",
    "paddle",
    "paddleformers",
    "jax",
    "distributed-jax",
    "tensorflow",
    "cross-framework",
    "kernels",
    "compat",
    "package",
]
