"""``python -m adagc.conformance --backend NAME [--jit] [--device D] [-- pytest args]``."""

from __future__ import annotations

import argparse
import sys

from . import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adagc.conformance",
        description="Run the adagc conformance suite against one or more backends.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        required=True,
        help="registered backend name (numpy, torch, jax, paddle, cupy) or a module path "
        "defining BACKEND; repeatable",
    )
    parser.add_argument("--jit", action="store_true", help="run update() through jit_update")
    parser.add_argument("--device", default=None, help="device for the arrays, e.g. cuda")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    ns = parser.parse_args(argv)
    extra = [a for a in ns.pytest_args if a != "--"]
    return run(ns.backend, jit=ns.jit, device=ns.device, pytest_args=extra)


if __name__ == "__main__":
    sys.exit(main())
