"""oneDNN's bf16 GEMM for a weight gradient g^T x in the layouts it can be given (AMX Xeon,
2 threads): g [T, G] and x [T, H] as T = steps x batch rows; ms a product, median of 11,
interleaved. "/2": one GEMM for two operands ([x; h] or [x | h]), halved."""
import statistics as st
import time

import torch

torch.set_num_threads(2)
bf = torch.bfloat16
for T, G, H in [(6400, 2048, 512), (6400, 1024, 256), (2500, 512, 128)]:
    dg = torch.randn(T, G, dtype=bf); h = torch.randn(T, H, dtype=bf); hh = torch.randn(T, 2 * H, dtype=bf)
    dgt = dg.t().contiguous(); ht = h.t().contiguous(); hht = hh.t().contiguous()
    cases = {
        "view dg.t()@h": lambda: torch.mm(dg.t(), h),
        "dgT@h": lambda: torch.mm(dgt, h),
        "hT@dg": lambda: torch.mm(ht, dg),
        "[x;h]T@dg /2": lambda: torch.mm(hht, dg),
        "dgT@[x|h] /2": lambda: torch.mm(dgt, hh),
    }
    res = {k: [] for k in cases}
    for f in cases.values():
        f()
    for r in range(11):
        for k, f in cases.items():
            t = time.perf_counter(); f(); res[k].append(time.perf_counter() - t)
    print(T, G, H, " | ".join(f"{k} {st.median(v) * 1e3 / (2 if '/2' in k else 1):.2f}"
                             for k, v in res.items()))
