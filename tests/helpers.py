"""Shared by the tests: the error measure, tolerances, and device/backend lists."""
import math

import pytest
import torch


# ||out - ref|| / ||ref|| against the float64 oracle, per storage dtype.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2,
             torch.float16: 1e-2}
# For torch's own LSTM (backend "cudnn"/"aten", and what "auto" routes there): we test that
# FastLSTM calls it right, not cuDNN's arithmetic, whose fp32 gradients were seen at up to
# 1.4e-5 and bf16 at 1.13e-2 on an H200 (benchmarks/results/, 2026-11-26).
TORCH_LSTM_TOLERANCE = {torch.float64: 1e-12, torch.float32: 5e-5, torch.bfloat16: 2e-2,
                        torch.float16: 1e-2}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}


def relative_error(out, ref):
    """NaN or inf anywhere gives inf: it can never pass."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return math.inf
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out, ref, tol, what=""):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    err = relative_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def device_backend_dtype_params():
    """(device, backend, dtype) triples to test: every backend the machine can run, in
    every dtype its device supports (bf16 on the CPU, half types on CUDA, and not for the
    reference, whose own arithmetic in half precision would prove nothing)."""
    params = [(d, b, t) for d in ("cpu",) for b in ("cpu", "reference", "aten", "auto")
              for t in ("fp32", "fp64", "bf16") if not (b == "reference" and t == "bf16")]
    for backend in ("cuda", "reference", "cudnn", "auto"):
        for dtype in ("fp32", "fp64", "bf16", "fp16"):
            if backend == "reference" and dtype in ("bf16", "fp16"):
                continue
            params.append(pytest.param("cuda", backend, dtype, marks=pytest.mark.gpu))
    return params


def skip_absent_kernels(dtype, kernels):
    """Skip the pairs of dtype and the `kernels` fixture (conftest.py) that repeat another case
    or do not exist."""
    if dtype == torch.float32 and kernels == "noamx":
        pytest.skip("fp32 never runs on AMX")
    if dtype == torch.bfloat16 and kernels == "avx2":
        pytest.skip("bf16 has no AVX2 build")
