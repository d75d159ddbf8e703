"""The FastLSTM layer's training step (backend cpu) alone, timed, then torch.profiler's table:
  python profile_layer.py charrnn|s3|big fp32|bf16"""
import sys, time, torch
from torch.profiler import profile, ProfilerActivity
from fastlstm import FastLSTM
torch.manual_seed(0)
shape = sys.argv[1]; dtype = sys.argv[2]
L,H,I,B,S = dict(charrnn=(2,256,64,64,100), s3=(2,128,128,50,50), big=(2,512,512,64,100))[shape]
m = FastLSTM(I,H,L,backend="cpu")
x = torch.randn(S,B,I,requires_grad=True)
def it():
    with torch.autocast("cpu",dtype=torch.bfloat16,enabled=dtype=="bf16"):
        y,_ = m(x)
    y.float().sum().backward()
for _ in range(5): it()
t=time.perf_counter(); n=20
for _ in range(n): it()
dt=(time.perf_counter()-t)/n
fl = 3*2*S*B*4*H*(I+H) + 3*2*S*B*4*H*(2*H)*(L-1)
print(f"{shape} {dtype}: {dt*1e3:.2f} ms/iter, {fl/dt/1e9:.0f} GFLOP/s")
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(5): it()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
