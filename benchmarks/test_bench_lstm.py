"""FastLSTM backends side by side (pytest-benchmark). Each group is one
shape x pass x dtype, so backends compare within it. Examples:

  pytest benchmarks --benchmark-json=bench.json           # cuda (graphs on, off) vs cudnn
  pytest benchmarks --bench-device=cpu                    # cpu, auto vs nn.LSTM (oneDNN),
                                                          # fp32 and bf16 autocast
  python benchmarks/compare.py bench.json                 # table of ratios
"""
import os

import pytest
import torch

import fastlstm
from fastlstm import FastLSTM

# name: (layers, hidden, batch, seq[, input size]); input size = hidden unless given.
# "charrnn": the trainer's default model and batch (embedding 64 -> 2 x 256).
SHAPES = {"S1": (2, 512, 64, 100), "S2": (3, 512, 100, 100), "S3": (2, 128, 50, 50),
          "step": (2, 512, 1, 1), "charrnn": (2, 256, 64, 100, 64), "B8": (2, 256, 8, 50)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
def test_lstm(benchmark, device, shape, backend, dtype_name, pass_, tf32):
    layers, hidden, batch, seq, *inputs = SHAPES[shape]
    inputs = inputs[0] if inputs else hidden
    dtype = DTYPES[dtype_name]
    # On the CPU, bf16 is bf16 autocast over an fp32 module (what a CPU user runs, and what
    # the trainer's --dtype auto does); on CUDA the module itself is converted.
    autocast = device == "cpu" and dtype != torch.float32
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("torch's CPU LSTM has no fp16 kernel")
    torch.manual_seed(0)
    # "cuda_eager": the CUDA backend with CUDA-graph replay off (one launch per kernel);
    # "cuda_persistent": its forward as the persistent kernel p1 (layer by layer);
    # "cuda_persistent4": p4 (the whole stack in one launch, the layers as a wavefront, on
    # tensor cores; fp32 only with TF32 on: --bench-tf32=on).
    if backend.startswith("cuda"):
        fastlstm.set_cuda_graphs(backend != "cuda_eager")
        fastlstm.set_persistent(backend.startswith("cuda_persistent"))
        os.environ["FASTLSTM_PERSISTENT_VERSION"] = "4" if backend == "cuda_persistent4" else "1"
        # A persistent kernel that cannot run this shape is skipped, not timed as the step
        # loop it would fall back to.
        os.environ["FASTLSTM_PERSISTENT_STRICT"] = "1"
    storage = torch.float32 if autocast else dtype
    lstm = FastLSTM(inputs, hidden, layers,
                    backend="cuda" if backend.startswith("cuda_") else backend).to(device, storage)
    x = torch.randn(seq, batch, inputs, device=device, dtype=storage)
    h0 = torch.randn(layers, batch, hidden, device=device, dtype=storage)
    c0 = torch.randn(layers, batch, hidden, device=device, dtype=storage)
    amp = lambda: torch.autocast(device, dtype=dtype, enabled=autocast)  # noqa: E731

    if pass_ == "fwd":
        def run():
            with torch.no_grad(), amp():
                lstm(x, (h0, c0))
            sync(device)
    else:
        x.requires_grad_()
        params = list(lstm.parameters())

        def run():
            with amp():
                out, (h, c) = lstm(x, (h0, c0))
            torch.autograd.grad(out.float().sum() + h.float().sum(), [x, *params])
            sync(device)

    benchmark.group = f"{shape} {pass_} {dtype_name} {device}"
    benchmark.extra_info.update(shape=shape, backend=backend, dtype=dtype_name, pass_=pass_,
                                device=device, **tf32)
    rounds = (5 if shape in ("S1", "S2") else 15 if shape == "charrnn" else 30) \
        if device == "cpu" else 30
    try:
        try:
            run()
        except RuntimeError as e:
            if "cannot run" not in str(e):
                raise
            pytest.skip(f"{backend} cannot run {shape} {dtype_name}")
        benchmark.pedantic(run, rounds=rounds, warmup_rounds=3, iterations=1)
    finally:
        if backend.startswith("cuda"):
            fastlstm.set_cuda_graphs(True)
            fastlstm.set_persistent(False)
            for name in ("VERSION", "STRICT"):
                os.environ.pop(f"FASTLSTM_PERSISTENT_{name}", None)
