"""One persistent version's first look on a GPU, at S1 and S2 (forward, fp32 and bf16, the
batch in 1 and 2 parts, grid barriers and the dataflow sync): its output against the step
loop's (and the dataflow sync's against the grid barrier's: the same arithmetic, so it should
be identical), and its forward time beside the step loop's and cuDNN's. One line per case,
printed as soon as it is known, so that a run cut short (a hang, a timeout) still shows what
came before. TF32 stays off (torch's default), so p4's fp32 lines run p3 and say so. device_check.sh runs it once per
version, each in its own process under a timeout:

  python3 benchmarks/persistent_smoke.py --version 4

The pytest suites judge correctness (tests/test_gpu.py); this only reports. Times: median
of 20 forwards (CUDA events), after 3 warm-up forwards."""
import argparse
import os
import statistics

import torch

import fastlstm
from fastlstm import FastLSTM

SHAPES = {"S1": (2, 512, 64, 100), "S2": (3, 512, 100, 100)}  # layers, hidden, batch, seq
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BOUND = {"fp32": 1e-4, "bf16": 2e-2}  # what the line calls "ok" (TF32 off)


def forward_ms(run, reps=20):
    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", required=True, choices=("1", "2", "3", "4"),
                   help="FASTLSTM_PERSISTENT_VERSION to run")
    p.add_argument("--shapes", default="S1,S2", help="comma-separated: S1, S2")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("persistent_smoke.py needs a CUDA GPU")
    os.environ["FASTLSTM_PERSISTENT_VERSION"] = args.version
    os.environ["FASTLSTM_PERSISTENT_STRICT"] = "1"  # time the kernel, never its fallback
    print(f"p{args.version} on {torch.cuda.get_device_name()}, torch {torch.__version__}",
          flush=True)
    for shape in args.shapes.split(","):
        layers, hidden, batch, seq = SHAPES[shape]
        for dtype_name, dtype in DTYPES.items():
            torch.manual_seed(0)
            lstm = FastLSTM(hidden, hidden, layers, backend="cuda").cuda().to(dtype)
            cudnn = torch.nn.LSTM(hidden, hidden, layers).cuda().to(dtype)
            x = torch.randn(seq, batch, hidden, device="cuda", dtype=dtype)
            state = tuple(torch.randn(layers, batch, hidden, device="cuda", dtype=dtype)
                          for _ in range(2))
            with torch.no_grad():
                fastlstm.set_persistent(False)
                want = lstm(x, state)[0].float()
                loop_ms = forward_ms(lambda: lstm(x, state))
                cudnn_ms = forward_ms(lambda: cudnn(x, state))
                fastlstm.set_persistent(True)
                variants = [("1", "0")] if args.version == "1" else \
                    [(parts, sync) for parts in ("1", "2") for sync in ("0", "1")]
                grid_out = {}
                for parts, dataflow in variants:
                    os.environ["FASTLSTM_PERSISTENT_BATCH_PARTS"] = parts
                    os.environ["FASTLSTM_PERSISTENT_DATAFLOW"] = dataflow
                    case = (f"p{args.version} {shape} {dtype_name} {parts} part(s), "
                            f"{'dataflow' if dataflow == '1' else 'grid barrier'}"
                            + (" (runs p3: TF32 off)" if args.version == "4"
                               and dtype == torch.float32 else ""))
                    try:
                        got = lstm(x, state)[0].float()
                    except RuntimeError as e:
                        print(f"{case}: {str(e).splitlines()[0][:120]}", flush=True)
                        continue
                    torch.cuda.synchronize()
                    err = ((got - want).norm() / want.norm()).item()
                    verdict = "ok" if err < BOUND[dtype_name] else "MISMATCH"
                    if dataflow == "0":
                        grid_out[parts] = got
                    elif parts in grid_out and not torch.equal(got, grid_out[parts]):
                        verdict += ", MISMATCH: not identical to the grid barrier's output"
                    ms = forward_ms(lambda: lstm(x, state))
                    # p3/p4: one launch of S + L - 1 waves; p1/p2: a launch per layer of S steps
                    stacked = args.version in ("3", "4")
                    waves = seq + layers - 1 if stacked else seq * layers
                    unit = "wave" if stacked else "layer-step"
                    print(f"{case}: {verdict} (error vs step loop {err:.2e}); fwd {ms:.3f} ms "
                          f"({1000 * ms / waves:.1f} us per {unit} of {waves}), "
                          f"step loop {loop_ms:.3f} ms, cuDNN {cudnn_ms:.3f} ms, "
                          f"cuDNN / p{args.version} {cudnn_ms / ms:.2f}x", flush=True)
                fastlstm.set_persistent(False)
                for name in ("BATCH_PARTS", "DATAFLOW"):
                    os.environ.pop(f"FASTLSTM_PERSISTENT_{name}", None)


if __name__ == "__main__":
    main()
