"""``examples/jax_train.py`` runs as is and shows AdaGC clipping the faulty tensor alone."""

from __future__ import annotations

import re


def test_jax_example_runs(run_python) -> None:
    proc = run_python("examples/jax_train.py", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    fault = re.search(r"step 250 .*h\(fc1\.kernel\) ([\d.]+)\s+h\(others\) ([\d.]+)\.\.", out)
    assert fault, out
    assert float(fault.group(1)) < 0.01 < float(fault.group(2))  # only fc1.kernel is cut
    vloss = float(re.search(r"validation loss ([\d.]+)", out).group(1))
    assert vloss < 2.5, out  # it learned (uniform guess: 5.545)
    assert "adagc/1 checkpoint: step 400, gamma of 7 tensors" in out
