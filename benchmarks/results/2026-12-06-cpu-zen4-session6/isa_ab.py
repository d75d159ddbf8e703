"""The fused layer (backend cpu) on its AVX-512 build against its AVX2 build, interleaved in
one process (FASTLSTM_CPU_ISA switched per call), and torch's LSTM at this CPU's own ISA.
python isa_ab.py --shapes H256B1,S3 --rounds 7 --passes fwd,train"""
import argparse, os, sys, time, statistics as st
sys.path.insert(0, "benchmarks")
import torch
from cpu_interleaved import make, shape_of
from fastlstm.charrnn.cli import keep_freed_memory
p = argparse.ArgumentParser()
p.add_argument("--shapes", default="H256B1,S3"); p.add_argument("--rounds", type=int, default=7)
p.add_argument("--passes", default="fwd,train")
args = p.parse_args()
keep_freed_memory()
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, malloc keep, fp32; "
      "median ms; ratio = median of per-round ratios")
for name in args.shapes.split(","):
    for pass_ in args.passes.split(","):
        runs = {"avx512": make(shape_of(name), "cpu", "fp32", pass_),
                "avx2": make(shape_of(name), "cpu", "fp32", pass_),
                "aten": make(shape_of(name), "aten", "fp32", pass_)}
        times = {k: [] for k in runs}
        for r in range(args.rounds + 1):
            for k, fn in runs.items():
                os.environ["FASTLSTM_CPU_ISA"] = "avx2" if k == "avx2" else "avx512"
                t = time.perf_counter(); fn(); dt = time.perf_counter() - t
                if r: times[k].append(dt)
        med = {k: st.median(v) * 1e3 for k, v in times.items()}
        ratio = lambda a, b: st.median(x / y for x, y in zip(times[a], times[b]))
        print(f"{name:8s} {pass_:5s}: avx512 {med['avx512']:8.2f}  avx2 {med['avx2']:8.2f}  "
              f"aten {med['aten']:8.2f}  avx2/avx512 {ratio('avx2', 'avx512'):.3f}  "
              f"avx512/aten {ratio('avx512', 'aten'):.3f}  avx2/aten {ratio('avx2', 'aten'):.3f}")
