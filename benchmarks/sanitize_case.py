"""A small forward+backward through the CUDA backend (step loop, then the persistent forward,
versions 1 and 4; p4's fp32 as TF32), for compute-sanitizer:
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/sanitize_case.py
--persistent-only skips the step loop's part."""
import os
import sys

import torch

import fastlstm
from fastlstm import FastLSTM, FastLSTMCell

persistent_only = "--persistent-only" in sys.argv  # (racecheck: the persistent kernels only)
for dtype in (torch.float32, torch.bfloat16) if not persistent_only else ():
    lstm = FastLSTM(13, 37, 2, bidirectional=True, backend="cuda").cuda().to(dtype)
    x = torch.randn(5, 3, 13, device="cuda", dtype=dtype, requires_grad=True)
    out, (h, c) = lstm(x)
    (out.float().sum() + c.float().sum()).backward()
    cell = FastLSTMCell(13, 37, backend="cuda").cuda().to(dtype)
    h1, c1 = cell(x[0])
    (h1.float().sum() + c1.float().sum()).backward()
os.environ["FASTLSTM_PERSISTENT_STRICT"] = "1"  # the kernels must run, not the fallback
fastlstm.set_persistent(True)
for version in ("1", "4"):
    os.environ["FASTLSTM_PERSISTENT_VERSION"] = version
    torch.backends.cuda.matmul.allow_tf32 = version == "4"
    for dtype in (torch.float32, torch.bfloat16):
        # Version 4 runs the unidirectional stack in one launch, the bidirectional one by
        # layers.
        for bidirectional, layers in ((True, 2), (False, 3)):
            lstm = FastLSTM(13, 37, layers, bidirectional=bidirectional,
                            backend="cuda").cuda().to(dtype)
            x = torch.randn(5, 3, 13, device="cuda", dtype=dtype, requires_grad=True)
            out, (h, c) = lstm(x)
            (out.float().sum() + c.float().sum()).backward()
torch.cuda.synchronize()
print("sanitize case ran")
