# A bf16 GEMM of S3's weight-gradient size on fresh operands each call (other allocations between), under
# glibc's default malloc: (microseconds, minor page faults of the call), sorted.
#   python benchmarks/results/2026-12-06-cpu-xeon-amx-session3/gemm_scratchpad_faults.py
import torch, time, resource
bf=torch.bfloat16
A0=torch.randn(256,2500).to(bf); B0=torch.randn(2500,512).to(bf)
r=[]
for _ in range(80):
    A=A0.clone(); B=B0.clone(); junk=[torch.empty(1<<i) for i in range(10,22)]
    f0=resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    s=time.perf_counter(); torch.mm(A,B); dt=(time.perf_counter()-s)*1e6
    r.append((round(dt), resource.getrusage(resource.RUSAGE_SELF).ru_minflt-f0))
print(sorted(r))
