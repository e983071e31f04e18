"""``python -m adagc.bench --backend numpy [--sets gpt2,small] [--repeats 15]``

Prints, per gradient set and scenario, the median time of one AdaGC step next to the
framework's own global-norm clipping measured in the same process, and their ratio; then a
"limit" row: the time the step's memory traffic (read every gradient, write the clipped ones)
takes at the copy bandwidth measured in the same run (its last column: that bandwidth).
"""

from __future__ import annotations

import argparse
import platform
import sys

from .gradsets import GRADSETS
from .harness import SCENARIOS, limit_row, load_plugin, run_case


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adagc.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", required=True, help="numpy, torch, jax, paddle or cupy")
    p.add_argument("--sets", default="gpt2,small", help="comma list of: " + ", ".join(GRADSETS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="steady, all-clipped")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per case")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    ns = p.parse_args(argv)
    try:
        plugin = load_plugin(ns.backend)
    except ModuleNotFoundError as exc:
        p.error(f"no benchmark plug-in for backend {ns.backend!r} ({exc})")
    try:
        getattr(plugin, "check", lambda: None)()  # e.g. a GPU plug-in without a device
    except RuntimeError as exc:
        p.error(str(exc))
    sets = [s.strip() for s in ns.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in GRADSETS]
    if bad:
        p.error(f"unknown gradient set(s) {bad}; choose from {list(GRADSETS)}")
    scenarios = [s.strip() for s in ns.scenarios.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in scenarios):
        p.error(f"unknown scenario in {scenarios}; choose from {list(SCENARIOS)}")

    show = not ns.quiet and sys.stderr.isatty()

    def progress(msg: str) -> None:
        if show:
            print(f"\r  {msg:<60}", end="", file=sys.stderr, flush=True)

    print(
        f"# adagc.bench backend={ns.backend} device={plugin.device} "
        f"python={platform.python_version()} machine={platform.machine()} "
        f"repeats={ns.repeats}"
    )
    print(f"# baseline: {plugin.baseline_name}")
    header = (
        f"{'set':<12} {'scenario':<12} {'method':<16} {'median ms':>10} "
        f"{'baseline ms':>12} {'ratio':>7} {'extra MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in sets:
        gradset = GRADSETS[name]()
        for scenario in scenarios:
            rows = run_case(plugin, gradset, scenario, ns.repeats, progress=progress)
            floor = limit_row(plugin, gradset, scenario, rows[0].baseline_ms, ns.repeats)
            for r in rows + ([floor] if floor is not None else []):
                if show:
                    print("\r" + " " * 64 + "\r", end="", file=sys.stderr)
                extra = "n/a" if r.extra_mib is None else f"{r.extra_mib:.1f}"
                if r.method == "limit":
                    extra = f"{extra} GB/s"
                print(
                    f"{r.gradset:<12} {r.scenario:<12} {r.method:<16} {r.median_ms:>10.3f} "
                    f"{r.baseline_ms:>12.3f} {r.ratio:>7.3f} {extra:>10}",
                    flush=True,
                )
        print(f"# {gradset.name}: {gradset.describe()}")
        for line in getattr(plugin, "notes", lambda g: [])(gradset):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
