"""bf16 error against the float64 oracle, per backend and seed, for one test case (GPU).

    python benchmarks/bf16_error.py [case name]   (default: wide_small_batch)

Prints, for each seed, every backend's largest ||out - ref|| / ||ref|| over outputs, final
states and gradients, and which tensor it was. The tests use one seed; this shows how far
that seed's number is from the spread."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch  # noqa: E402

from helpers import relative_error  # noqa: E402
from test_lstm import CASES, outputs_and_grads  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "wide_small_batch"
case = next(c for c in CASES if c.name == name)
backends = ("cuda", "triton", "cudnn")
print(f"case {case.name}: layers {case.layers}, hidden {case.hidden}, batch {case.batch}, "
      f"seq {case.seq}; bf16; max relative error over all outputs and gradients")
print("seed  " + "  ".join(f"{b:>22}" for b in backends))
for seed in [1000 + len(case.name)] + list(range(5)):
    cells = []
    for backend in backends:
        try:
            got, want, _, _ = outputs_and_grads(case, "cuda", backend, torch.bfloat16, seed)
            key, err = max(((k, relative_error(got[k], want[k])) for k in want),
                           key=lambda kv: kv[1])
            cells.append(f"{err:9.3g} {key:>12}")
        except Exception as e:  # noqa: BLE001 - report, go on with the other backends
            cells.append(f"{type(e).__name__:>22}")
    print(f"{seed:<5} " + "  ".join(cells))
