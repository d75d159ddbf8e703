import torch, time, statistics, sys
from fastlstm import FastLSTM
torch.set_num_threads(2)
torch.manual_seed(0)
res = {}
for (H, B, dt) in [(256, 1, "fp32"), (256, 1, "bf16"), (512, 1, "fp32"), (16, 1, "fp32")]:
    m = FastLSTM(H, H, 2).eval()
    x = torch.randn(1, B, H); hx = (torch.zeros(2, B, H), torch.zeros(2, B, H))
    ac = torch.autocast("cpu", torch.bfloat16, enabled=dt == "bf16")
    with torch.no_grad(), ac:
        for _ in range(200): m(x, hx)
        ts = []
        for _ in range(3000):
            t = time.perf_counter(); m(x, hx); ts.append(time.perf_counter() - t)
    print(f"2x{H} b{B} {dt}: {statistics.median(ts)*1e6:.1f} us")
