"""oneDNN's bf16 GEMMs at the training step's shapes (torch.mm, 2 threads, median of 31);
`fp32` as the argument: the same in float32 (MKL's; added 2026-12-06, session7)."""
import time, statistics, torch
def rate(name, a, b, reps=31):
    for _ in range(3): torch.mm(a, b)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); torch.mm(a, b); ts.append(time.perf_counter() - t)
    m = statistics.median(ts); fl = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    print(f"{name:44s} {m*1e3:7.3f} ms  {fl/m/1e9:6.0f} GFLOP/s")
import sys
bf = torch.float32 if sys.argv[1:] == ["fp32"] else torch.bfloat16
for (S, B, I, H) in [(50, 50, 128, 128), (100, 64, 64, 256), (100, 64, 256, 256), (50, 8, 256, 256), (100, 64, 512, 512)]:
    N = S * B
    g = torch.randn(N, 4 * H).to(bf); x = torch.randn(N, I).to(bf); w = torch.randn(4 * H, I).to(bf)
    h = torch.randn(N, H).to(bf)
    print(f"-- S{S} B{B} I{I} H{H}")
    rate(f"dx = g[{N},{4*H}] W_ih[{4*H},{I}]", g, w)
    rate(f"dW_ih = g^T (view) x", g.t(), x)
    xh = torch.cat([x, h], 1).t().contiguous()
    rate(f"[x|h]^T[{I+H},{N}] g (transposed, one GEMM)", xh, g)
    rate(f"proj = x[{N},{I}] W_ih^T", x, w.t())
