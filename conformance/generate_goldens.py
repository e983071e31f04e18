"""Regenerate ``goldens/*.json`` from the naive reference:
``python -m adagc.conformance.generate_goldens [--check]``.

Each scenario is retried with the next seed until every clip decision in it is at least
``MARGIN`` (relative) away from its threshold, so float32 backends make the same decisions.
``--check`` regenerates in memory and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from adagc import AdaGCConfig, NonFiniteGradientError
from adagc.backends.reference import RefState, fsum_sq, ref_init, ref_update

from .scenarios import SCENARIOS, Scenario

GOLDENS = Path(__file__).parent / "goldens"
MARGIN = 1e-3
STORE_CLIPPED_UP_TO = 16  # larger scenarios derive the expected output as h_i * g_i


def encode_list(arrays: list[Any], round_inputs: bool = False) -> list[Any]:
    """JSON form of a gradient list: null, {"tie": i} or {"shape": [...], "data": [...]}."""
    first: dict[int, int] = {}
    out: list[Any] = []
    for j, a in enumerate(arrays):
        if a is None:
            out.append(None)
            continue
        i = first.setdefault(id(a), j)
        if i != j:
            out.append({"tie": i})
        else:
            arr = np.asarray(a, dtype=np.float64)
            out.append(
                {
                    "shape": list(arr.shape),
                    "data": [_short(x) for x in arr.ravel()]
                    if round_inputs
                    else arr.ravel().tolist(),
                }
            )
    return out


def _short(x: float) -> float:
    """Inputs are rounded to 12 significant digits (smaller files); the rounded values are
    what the reference sees, so the goldens stay exact."""
    return float(f"{x:.12g}")


def decode_list(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item is None:
            out.append(None)
        elif "tie" in item:
            out.append(out[item["tie"]])
        else:
            out.append(np.asarray(item["data"], dtype=np.float64).reshape(item["shape"]))
    return out


def _margins_ok(grads: list[Any], state: RefState, cfg: AdaGCConfig) -> bool:
    norms, ids = [], set()
    for g in grads:
        if g is None or id(g) in ids or np.size(g) == 0:
            norms.append(0.0)
        else:
            norms.append(float(np.sqrt(np.sum(np.square(g)))))
        if g is not None:
            ids.add(id(g))
    if not all(math.isfinite(n) for n in norms):
        return True
    G = math.sqrt(fsum_sq(norms))

    def far(x: float, t: float) -> bool:
        return abs(x - t) >= MARGIN * abs(t)

    if state.step < cfg.warmup_steps:
        return G == 0 or far(G + cfg.eps, cfg.lambda_abs)
    if cfg.granularity == "global":
        return G == 0 or not state.seen[0] or far(G, cfg.lambda_rel * state.gamma[0])
    return all(
        n == 0 or not state.seen[i] or far(n, cfg.lambda_rel * state.gamma[i])
        for i, n in enumerate(norms)
    )


def _trajectory(sc: Scenario, seed: int) -> dict[str, Any] | None:
    steps = [
        decode_list(encode_list(s, round_inputs=True))
        for s in sc.build(np.random.default_rng(seed))
    ]
    state = ref_init(len(steps[0]), sc.cfg)
    records = []
    for grads in steps:
        if not _margins_ok(grads, state, sc.cfg):
            return None
        rec: dict[str, Any] = {"grads": encode_list(grads, round_inputs=True)}
        try:
            clipped, new_state, stats = ref_update(grads, state, sc.cfg)
        except NonFiniteGradientError as exc:
            rec["raises"] = {"error": "NonFiniteGradientError", "tensors": exc.tensors}
            new_state = state
        else:
            if len(grads) <= STORE_CLIPPED_UP_TO:
                rec["clipped"] = encode_list(clipped)
            rec["stats"] = {
                "norms": stats.norms,
                "coefficients": stats.coefficients,
                "global_norm": stats.global_norm,
                "clipped_global_norm": stats.clipped_global_norm,
                "num_clipped": stats.num_clipped,
                "nonfinite": stats.nonfinite,
                "warmup": stats.warmup,
            }
        rec["state"] = {"step": new_state.step, "gamma": new_state.gamma, "seen": new_state.seen}
        records.append(rec)
        state = new_state
    return {
        "scenario": sc.name,
        "seed": seed,
        "config": golden_config(sc.cfg),
        "num_tensors": len(steps[0]),
        "steps": records,
    }


# Fields added after the first goldens, with the default that keeps the old behaviour: a
# golden stores them only when set otherwise, so the older files stay byte-identical (and
# ``AdaGCConfig.from_dict`` fills the default back in).
_LATER_FIELDS = {"warmup_gamma": "clipped"}


def golden_config(cfg: AdaGCConfig) -> dict[str, Any]:
    """The config as a golden stores it (``to_dict`` without later fields at their default)."""
    data = cfg.to_dict()
    for key, default in _LATER_FIELDS.items():
        if data.get(key) == default:
            del data[key]
    return data


def build(sc: Scenario) -> dict[str, Any]:
    for seed in range(sc.seed, sc.seed + 200):
        traj = _trajectory(sc, seed)
        if traj is not None:
            return traj
    raise RuntimeError(f"no seed gives margins >= {MARGIN} for scenario {sc.name}")


def dumps(traj: dict[str, Any]) -> str:
    return json.dumps(traj, separators=(",", ":"), allow_nan=True) + "\n"


def differences(old: Any, new: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves at which two decoded goldens differ, as ``(path, old, new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")
        ]
    same = old == new or (
        isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    )
    return [] if same else [(where, old, new)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed files differ")
    ns = parser.parse_args(argv)
    GOLDENS.mkdir(exist_ok=True)
    stale = []
    for sc in SCENARIOS:
        text = dumps(build(sc))
        path = GOLDENS / f"{sc.name}.json"
        if ns.check:
            if not path.exists():
                stale.append(path.name)
                print(f"{path.name}: missing")
            elif path.read_text() != text:
                stale.append(path.name)
                diffs = differences(json.loads(path.read_text()), json.loads(text))
                print(f"{path.name}: {len(diffs)} value(s) differ (committed -> regenerated):")
                for where, old, new in diffs[:5]:
                    print(f"  {where}: {old!r} -> {new!r}")
        else:
            path.write_text(text)
            print(f"wrote {path.name} ({len(text) // 1024} KiB)")
    if stale:
        print(f"stale goldens: {stale}; run python -m adagc.conformance.generate_goldens")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
