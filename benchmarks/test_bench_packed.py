"""PackedSequence input side by side (pytest-benchmark, CPU): FastLSTM on backend="auto"
against torch's own packed LSTM ("aten"), fp32 and bf16 (autocast over an fp32 module),
inference (no_grad) and a training step (forward + backward to the packed data and every
parameter), at issue 27's shapes: P1 2 x 256, batch 32, seq 100 and P2 2 x 128, batch 8,
seq 60, lengths uniform in [seq / 5, seq], unsorted (pack_padded_sequence(...,
enforce_sorted=False)). The cases are cpu_interleaved.py's (--packed), which times them
interleaved for the NOTES tables:

  pytest benchmarks/test_bench_packed.py --benchmark-json=packed.json
  python benchmarks/compare.py packed.json
  python benchmarks/cpu_interleaved.py --packed --shapes P1,P2 [--bidirectional]
"""
import pytest

from cpu_interleaved import NAMED, make


# (Not named backend / dtype_name: conftest.py parametrizes those for the layer groups.)
@pytest.mark.parametrize("packed_backend", ["auto", "aten"])
@pytest.mark.parametrize("packed_pass", ["fwd", "train"])
@pytest.mark.parametrize("packed_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("packed_shape", ["P1", "P2"])
def test_packed(benchmark, device, packed_shape, packed_dtype, packed_pass, packed_backend):
    if device != "cpu":
        pytest.skip("packed: CPU (cuDNN runs packed input natively on GPUs)")
    run = make(NAMED[packed_shape], packed_backend, packed_dtype, packed_pass, packed=True)
    benchmark.group = f"packed {packed_shape} {packed_dtype} {packed_pass}"
    benchmark.extra_info.update(shape=packed_shape, backend=packed_backend,
                                dtype=packed_dtype, pass_=packed_pass, device=device)
    benchmark(run)
