"""One build of fastlstm (the package dir given first on sys.path) against torch's LSTM, in
one process, interleaved: per shape / dtype / pass the median of per-round ratios ours/torch.
Run it alternately for two builds (PYTHONPATH) to compare them through torch's LSTM."""
import statistics, sys, time, os
import torch
import fastlstm
from fastlstm import FastLSTM
print("#", os.path.dirname(fastlstm.__file__))
SHAPES = {"S3": (128, 50, 50, 128), "charrnn": (256, 64, 100, 64), "H256B38": (256, 38, 50, 256),
          "H128B14": (128, 14, 50, 128), "H128B8": (128, 8, 50, 128)}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
torch.manual_seed(0)
cases = []
for name, (H, B, S, I) in SHAPES.items():
    ours, ref = FastLSTM(I, H, 2, backend="cpu"), torch.nn.LSTM(I, H, 2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(S, B, I)
    for dt in ("bf16", "fp32"):
        for ps in ("fwd", "train"):
            cases.append((name, dt, ps, ours, ref, x))
def run(m, x, dt, ps):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bf16"):
        if ps == "fwd":
            with torch.no_grad():
                m(x)
        else:
            xx = x.detach().requires_grad_()
            out, _ = m(xx)
            out.float().sum().backward()
ratios = {c[:3]: [] for c in cases}
for c in cases:
    for m in c[3:5]: run(m, c[5], c[1], c[2])
for r in range(rounds):
    for c in cases:
        t = []
        for m in c[3:5]:
            t0 = time.perf_counter(); run(m, c[5], c[1], c[2]); t.append(time.perf_counter() - t0)
        ratios[c[:3]].append(t[0] / t[1])
for k, v in ratios.items():
    print(f"{k[0]:8s} {k[1]} {k[2]:5s} {statistics.median(v):.3f}")
