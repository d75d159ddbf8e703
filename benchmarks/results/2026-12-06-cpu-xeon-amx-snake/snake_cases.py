import sys, time, statistics, torch
from fastlstm import FastLSTM
torch.manual_seed(0)
cases = [("2x512 b1 s100 fp32", 512, 512, 1, 100, False), ("2x512 b1 s100 bf16", 512, 512, 1, 100, True),
         ("2x1024 b1 s50 bf16", 1024, 1024, 1, 50, True), ("2x768 b4 s50 fp32", 768, 768, 4, 50, False)]
for name, H, I, B, S, bf in cases:
    m = FastLSTM(I, H, 2).eval(); ref = torch.nn.LSTM(I, H, 2).eval(); ref.load_state_dict(m.state_dict())
    x = torch.randn(S, B, I)
    res = {"auto": [], "aten": []}
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf):
        for r in range(15):
            for k, f in (("auto", lambda: m(x)), ("aten", lambda: ref(x))):
                f(); t0 = time.perf_counter(); f(); f(); res[k].append((time.perf_counter() - t0) / 2)
    rat = statistics.median([a / b for a, b in zip(res["auto"], res["aten"])])
    print(f"{name}: auto {statistics.median(res['auto'])*1e3:.2f} ms, aten {statistics.median(res['aten'])*1e3:.2f} ms, ratio {rat:.2f}", flush=True)
