import sys, time, os, torch, resource
from fastlstm.charrnn.cli import keep_freed_memory; keep_freed_memory()
sys.path.insert(0, "benchmarks")
from cpu_interleaved import make, shape_of
name, dtype, pass_, backend = sys.argv[1:5]
f = make(shape_of(name), backend, dtype, pass_)
for _ in range(5): f()
n = int(sys.argv[5]) if len(sys.argv) > 5 else 100
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range(n): f()
t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(f"{name} {dtype} {pass_} {backend}: {(t1-t0)/n*1e3:.2f} ms/iter, cpu/wall {cpu/(t1-t0):.2f}")
