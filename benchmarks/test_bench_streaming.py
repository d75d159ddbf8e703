"""Streaming inference side by side (pytest-benchmark, CPU): a deployed LSTM called one time
step at a time, no gradient. FastLSTM on backend="auto" ("auto") against torch's nn.LSTM
("aten") and, where installed, onnxruntime running the same nn.LSTM exported to ONNX (fp32,
2 intra-op threads; "onnxruntime", the baseline compare.py divides by). bf16 is autocast
over an fp32 module for FastLSTM and nn.LSTM; onnxruntime stays fp32 (the issue's target
compares bf16 calls with it). The cell group: FastLSTMCell against nn.LSTMCell.

  pytest benchmarks/test_bench_streaming.py --benchmark-json=streaming.json
  python benchmarks/compare.py streaming.json

Run as a script, it times every case interleaved in blocks (each round runs a block of calls
per backend in turn, after a pause in which the threads the previous backend left spinning
go to sleep; the first calls of a block, whose caches the other backends have churned, are
left out: a streaming model is called again and again; medians over all rounds, so the
machine's drift hits all backends alike) and prints each against its floor,
the weights' bytes per call at the measured cache bandwidth (floor_ms):

  python benchmarks/test_bench_streaming.py [--rounds 400] [--l3-gbs 53] [--l2-gbs 117]
"""
import argparse
import io
import statistics
import time
import warnings

import pytest
import torch

from fastlstm import FastLSTM, FastLSTMCell

# name: (layers, hidden, batch, steps)
CASES = {"2x256 b1": (2, 256, 1, 1), "2x256 b4": (2, 256, 4, 1), "2x512 b1": (2, 512, 1, 1),
         "2x512 b4": (2, 512, 4, 1), "2x512 b1 s100": (2, 512, 1, 100),
         "2x16 b1": (2, 16, 1, 1)}
CELL = (512, 1)  # FastLSTMCell: hidden (= input), batch
BACKENDS = ("auto", "aten", "onnxruntime")


def onnx_session(lstm, x, state):
    """onnxruntime on `lstm` (an nn.LSTM) exported with (x, (h0, c0)); None without it."""
    try:
        import onnxruntime
    except ImportError:
        return None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (x, state), buffer, input_names=["x", "h0", "c0"],
                          dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(buffer.getvalue(), options,
                                        providers=["CPUExecutionProvider"])


def make_call(case, backend, dtype_name):
    """A no-argument function making one streaming call of `case` on `backend`, or None
    (onnxruntime not installed)."""
    torch.manual_seed(0)
    if case == "cell":
        hidden, batch = CELL
        cell = (FastLSTMCell if backend == "auto" else torch.nn.LSTMCell)(hidden, hidden)
        x, state = torch.randn(batch, hidden), (torch.randn(batch, hidden),
                                                torch.randn(batch, hidden))
        module = cell
    else:
        layers, hidden, batch, steps = CASES[case]
        ref = torch.nn.LSTM(hidden, hidden, layers).eval()
        x = torch.randn(steps, batch, hidden)
        state = (torch.randn(layers, batch, hidden), torch.randn(layers, batch, hidden))
        if backend == "onnxruntime":
            session = onnx_session(ref, x, state)
            if session is None:
                return None
            feed = {"x": x.numpy(), "h0": state[0].numpy(), "c0": state[1].numpy()}
            return lambda: session.run(None, feed)
        module = ref
        if backend == "auto":
            module = FastLSTM(hidden, hidden, layers).eval()
            module.load_state_dict(ref.state_dict())
    autocast = dtype_name == "bf16"

    def call():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return module(x, state)
    return call


def floor_ms(case, dtype_name, l3_gbs, l2_gbs):
    """The call's floor in ms: every weight read once from L3 (one step: W_ih and W_hh of
    every layer); for many steps, W_ih once from L3 and W_hh every step from the cores' L2
    (where it fits: 2 x 512 fp32 is 2 MiB a core for each layer, an L2 on the AMX Xeon),
    the input projection's GEMM taken as free."""
    size = 2 if dtype_name == "bf16" else 4
    if case == "cell":
        hidden, _ = CELL
        return 8 * hidden * hidden * size / (l3_gbs * 1e6)
    layers, hidden, _, steps = CASES[case]
    per_matrix = layers * 4 * hidden * hidden * size
    if steps == 1:
        return 2 * per_matrix / (l3_gbs * 1e6)
    return per_matrix / (l3_gbs * 1e6) + steps * per_matrix / (l2_gbs * 1e6)


def _params():
    for case in [*CASES, "cell"]:
        for dtype_name in ("fp32", "bf16"):
            if case == "cell" and dtype_name == "bf16":
                continue
            for backend in BACKENDS:
                if backend == "onnxruntime" and case == "cell":
                    continue
                yield case, dtype_name, backend


# (Not named backend / dtype_name: conftest.py parametrizes those for the layer groups.)
@pytest.mark.parametrize("case,stream_dtype,stream_backend", list(_params()))
def test_streaming(benchmark, device, case, stream_dtype, stream_backend):
    if device != "cpu":
        pytest.skip("streaming: CPU calls")
    call = make_call(case, stream_backend, stream_dtype)
    if call is None:
        pytest.skip("onnxruntime is not installed")
    benchmark.group = f"streaming {case} {stream_dtype}"
    benchmark.extra_info.update(shape=case, backend=stream_backend, dtype=stream_dtype,
                                pass_="fwd", device=device)
    result = benchmark(call)
    assert result is not None


def interleaved(rounds, l3_gbs, l2_gbs):
    print(f"threads {torch.get_num_threads()}; median over ~{rounds} calls a backend, "
          f"interleaved in blocks; floor: weight bytes per call at {l3_gbs} GB/s from L3 "
          f"({l2_gbs} GB/s from L2: W_hh, 100 steps)")
    print(f"{'case':<15} {'dtype':<5} {'onnxruntime':>11} {'aten':>9} {'auto':>9} "
          f"{'auto/ort':>8} {'auto/aten':>9} {'floor':>8} {'auto/floor':>10}   (ms)")
    for case, dtype_name in dict.fromkeys((c, d) for c, d, _ in _params()):
        calls = {b: make_call(case, b, dtype_name) for b in BACKENDS
                 if not (b == "onnxruntime" and case == "cell")}
        calls = {b: f for b, f in calls.items() if f is not None}
        long = case.endswith("s100")
        block, warm = (3, 1) if long else (12, 4)
        times = {b: [] for b in calls}
        for _ in range(max(3, rounds // block // (10 if long else 1))):
            for b, f in calls.items():
                time.sleep(0.02)
                for k in range(block):
                    t = time.perf_counter()
                    f()
                    if k >= warm:
                        times[b].append(time.perf_counter() - t)
        med = {b: statistics.median(ts) * 1e3 for b, ts in times.items()}
        floor = floor_ms(case, dtype_name, l3_gbs, l2_gbs)
        ort = med.get("onnxruntime")
        print(f"{case:<15} {dtype_name:<5} {ort if ort else float('nan'):>11.3f} "
              f"{med['aten']:>9.3f} {med['auto']:>9.3f} "
              f"{med['auto'] / ort if ort else float('nan'):>8.2f} "
              f"{med['auto'] / med['aten']:>9.2f} {floor:>8.3f} {med['auto'] / floor:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400, help="calls per backend (default 400; "
                        "the 100-step case a tenth of it)")
    parser.add_argument("--l3-gbs", type=float, default=53.0,
                        help="L3 read bandwidth the floor assumes (default 53: 2 threads on "
                             "the AMX Xeon, benchmarks/NOTES.md)")
    parser.add_argument("--l2-gbs", type=float, default=117.0,
                        help="L2 read bandwidth, both cores (default 117: the AMX Xeon)")
    args = parser.parse_args()
    interleaved(args.rounds, args.l3_gbs, args.l2_gbs)
