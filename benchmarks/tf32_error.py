"""What TF32 inputs cost p4's fp32 stack: a CPU emulation (no GPU needed) for the bound of
tests/test_gpu.py::test_persistent_p4_fp32_only_as_tf32.

    python benchmarks/tf32_error.py [--seeds 7,8,9]

On that test's inputs (test_stack.stack_args: 2 layers, hidden 70, batch 37, 9 steps, weights
x 0.2), runs the stack in float64 twice: once with exact products, once with both factors of
every in-kernel product (h_{t-1} W_hh^T, and h_below W_ih^T above layer 0) rounded to TF32 as
p4's cvt.rna.tf32.f32 does (10 mantissa bits, to nearest, ties away from zero); layer 0's
xproj comes in precomputed, as in the test. Prints ||h_tf32 - h|| / ||h|| per seed."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_stack import stack_args  # noqa: E402


def tf32(x):
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).double()


def stack_hs(xproj, h0, c0, w_ih, bias, w_hh, rnd):
    below = None
    out = []
    for layer in range(len(w_hh)):
        h, c, hs = h0[layer], c0[layer], []
        for s in range(xproj.shape[0]):
            pre = rnd(h) @ rnd(w_hh[layer]).t() + (
                xproj[s] if layer == 0 else rnd(below[s]) @ rnd(w_ih[layer - 1]).t()
                + bias[layer - 1])
            i, f, g, o = pre.chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            hs.append(h)
        below = hs
        out.append(torch.stack(hs))
    return torch.stack(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="7,8,9", help="comma-separated (the test uses 7)")
    for seed in map(int, p.parse_args().seeds.split(",")):
        args = [[t.detach().float().double() * 0.2 for t in a] if isinstance(a, list)
                else a.detach().float().double()
                for a in stack_args(layers=2, steps=9, batch=37, hidden=70, seed=seed)]
        exact, rounded = stack_hs(*args, lambda x: x), stack_hs(*args, tf32)
        print(f"seed {seed}: relative error {((rounded - exact).norm() / exact.norm()):.3e}")


if __name__ == "__main__":
    main()
