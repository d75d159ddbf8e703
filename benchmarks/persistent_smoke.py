"""A persistent version's first look on a GPU, at S1 and S2 (forward, fp32 and bf16): its
output against the step loop's, and its forward time beside the step loop's and cuDNN's. One
line per case, printed as soon as it is known, so that a run cut short (a hang, a timeout)
still shows what came before. p4 runs fp32 only as TF32, so its fp32 lines turn TF32 on (for
matmuls; the step loop's GEMMs then use it too) and say so. device_check.sh runs it in its
own process under a timeout:

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
BOUND = {"fp32": 1e-4, "tf32": 2e-3, "bf16": 2e-2}  # what the line calls "ok"


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
    p.add_argument("--version", required=True, choices=("1", "4"),
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
            tf32 = args.version == "4" and dtype == torch.float32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.manual_seed(0)
            lstm = FastLSTM(hidden, hidden, layers, backend="cuda").cuda().to(dtype)
            cudnn = torch.nn.LSTM(hidden, hidden, layers).cuda().to(dtype)
            x = torch.randn(seq, batch, hidden, device="cuda", dtype=dtype)
            state = tuple(torch.randn(layers, batch, hidden, device="cuda", dtype=dtype)
                          for _ in range(2))
            case = f"p{args.version} {shape} {dtype_name}" + (" (TF32 on)" if tf32 else "")
            with torch.no_grad():
                fastlstm.set_persistent(False)
                want = lstm(x, state)[0].float()
                loop_ms = forward_ms(lambda: lstm(x, state))
                cudnn_ms = forward_ms(lambda: cudnn(x, state))
                fastlstm.set_persistent(True)
                try:
                    got = lstm(x, state)[0].float()
                except RuntimeError as e:
                    print(f"{case}: {str(e).splitlines()[0][:120]}", flush=True)
                    fastlstm.set_persistent(False)
                    continue
                torch.cuda.synchronize()
                err = ((got - want).norm() / want.norm()).item()
                verdict = "ok" if err < BOUND["tf32" if tf32 else dtype_name] else "MISMATCH"
                ms = forward_ms(lambda: lstm(x, state))
                fastlstm.set_persistent(False)
            # p4: one launch of S + L - 1 waves; p1: a launch per layer of S steps
            waves = seq + layers - 1 if args.version == "4" else seq * layers
            unit = "wave" if args.version == "4" else "layer-step"
            print(f"{case}: {verdict} (error vs step loop {err:.2e}); fwd {ms:.3f} ms "
                  f"({1000 * ms / waves:.1f} us per {unit} of {waves}), "
                  f"step loop {loop_ms:.3f} ms, cuDNN {cudnn_ms:.3f} ms, "
                  f"cuDNN / p{args.version} {cudnn_ms / ms:.2f}x", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False

if __name__ == "__main__":
    main()
