"""The bf16 trainer's ops by input shape (torch.profiler, record_shapes), 3 iterations after 3:
which GEMMs the iteration runs.  python benchmarks/results/2026-12-07-cpu-zen4-epilogue/trainer_gemm_shapes.py"""
import sys, os
sys.path.insert(0, "benchmarks")
import torch
from torch.profiler import ProfilerActivity, profile
from test_bench_trainer import trainer_run
from fastlstm.charrnn import train
run = trainer_run("cpu", "auto", "auto")
for _ in range(3): train.step(run)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(3): train.step(run)
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=30, max_shapes_column_width=80))
