# FastLSTM (backend cpu) and torch.nn.LSTM inference, no grad, against the FLOP floor (the tile's
# peak: 234 GFLOP/s fp32, 470 bf16 on 2 cores; half on 1). Interleaved, 30 rounds, first quartile.
#   python benchmarks/results/2026-12-07-cpu-zen4-epilogue/inference_floor.py
import torch, time, sys, fastlstm
from fastlstm import FastLSTM
torch.manual_seed(0)
def bench(H, B, S, I, dtype, threads, layers=2, reps=30):
    torch.set_num_threads(threads)
    m = FastLSTM(I, H, layers, backend="cpu")
    ref = torch.nn.LSTM(I, H, layers)
    x = torch.randn(S, B, I)
    res = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype=="bf16"):
        for name, mod in (("ours", m), ("torch", ref)):
            for _ in range(3): mod(x)
        ts = {"ours": [], "torch": []}
        for r in range(reps):
            for name, mod in (("ours", m), ("torch", ref)):
                t0 = time.perf_counter(); mod(x); ts[name].append(time.perf_counter() - t0)
    flops = 2 * S * B * 4 * H * (I + H) * 1 + 2 * S * B * 4 * H * (H + H) * (layers - 1)
    floor = flops / (234e9 if dtype == "fp32" else 470e9) * (2 / threads)
    o = sorted(ts["ours"])[reps // 4]; t = sorted(ts["torch"])[reps // 4]
    print(f"H{H} B{B} S{S} I{I} {dtype} thr{threads}: ours {o*1e3:.2f} ms torch {t*1e3:.2f} ms floor {floor*1e3:.2f} ms  ours/floor {o/floor:.2f}")
for dt in ("fp32", "bf16"):
    for thr in (1, 2):
        bench(128, 50, 50, 128, dt, thr)
    bench(256, 64, 100, 64, dt, 2)
