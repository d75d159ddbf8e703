"""The char-rnn trainer's whole iteration side by side (pytest-benchmark): `python -m
fastlstm.train`'s own step (fastlstm.charrnn.train.step: learning rate, forward under
autocast, cross-entropy, backward, gradient clipping, AdamW) at its default size (2 x 512,
embedding 64, batch 64 x seq 100, dropout 0.3, weight drop 0.3) on random text of 65 symbols, with the model's
LSTM on `--backend auto` against `--backend aten` (torch's LSTM, the baseline compare.py
divides by). dtype "auto" is the trainer's default (bf16 autocast where the device computes
bf16 natively, else fp32).

  pytest benchmarks/test_bench_trainer.py --bench-device=cpu --benchmark-json=trainer.json
  python benchmarks/compare.py trainer.json

On the CPU the trainer has glibc's malloc keep freed memory for reuse
(fastlstm.charrnn.cli.keep_freed_memory; `--return-freed-memory` turns it off): so does this
benchmark, process-wide, from its first test on. `--malloc default` (script mode) measures
glibc's default instead, where torch's LSTM faults its workspace in at every call.

pytest-benchmark times one backend's rounds after the other's, and this shared machine's
speed drifts by up to 2x over minutes: as a script it interleaves them instead (each round
one iteration of every run, in turn) and prints the median of the per-round ratios, and the
iteration against its FLOP floor at a given rate:

  python benchmarks/test_bench_trainer.py [--rounds 30] [--tflops 3.5] [--fp32-tflops 0.396]
"""
import argparse
import statistics
import time

import numpy as np
import pytest
import torch

from fastlstm.charrnn import data, train
from fastlstm.charrnn.cli import keep_freed_memory
from fastlstm.charrnn.distributed import Ranks

VOCAB = 65


def trainer_run(device: str, backend: str, dtype_flag: str) -> train.Run:
    """A train.Run as train.train's set-up leaves it, on random ids instead of a corpus."""
    cfg = dict(train.ARCH, **train.TRAINING)
    cfg.update(backend=backend, dtype=dtype_flag, corpus=None)
    dev = torch.device(device)
    dtype = train.resolve_dtype(dtype_flag, dev)
    torch.manual_seed(cfg["seed"])
    ids = np.random.default_rng(0).integers(
        0, VOCAB, cfg["batch_size"] * (8 * cfg["seq_length"] + 1), dtype=np.uint8)
    run = train.Run(args=None, cfg=cfg, ranks=Ranks(dev.type), device=dev, dtype=dtype,
                    amp_dtype=train.DTYPES[dtype], say=lambda *a, **k: None,
                    vocab=data.Vocab([chr(32 + i) for i in range(VOCAB)], "utf-8"),
                    config=dict(vocab_size=VOCAB, **{k: cfg[k] for k in train.ARCH}))
    run.batches = data.StreamBatches(ids, cfg["batch_size"], cfg["seq_length"])
    run.total_iters = 10 ** 9
    train.build_model(run)
    train.wrap_model(run)
    run.started = time.time()
    run.model.train()
    return run


@pytest.mark.parametrize("trainer_backend", ["auto", "aten"])
@pytest.mark.parametrize("trainer_dtype", ["auto", "fp32"])
def test_trainer_iteration(benchmark, device, trainer_backend, trainer_dtype):
    if device == "cpu":
        keep_freed_memory()  # as python -m fastlstm.train does
    run = trainer_run(device, trainer_backend, trainer_dtype)
    benchmark.group = f"trainer iter {run.dtype} {device}"
    benchmark.extra_info.update(shape="trainer", backend=trainer_backend, dtype=run.dtype,
                                pass_="iter", device=device, dtype_flag=trainer_dtype)
    before = run.it
    benchmark.pedantic(lambda: train.step(run), rounds=5 if device == "cpu" else 20,
                       warmup_rounds=2, iterations=1)
    assert run.it > before and all(np.isfinite(r["loss"]) for r in run.history)


def iteration_flops(cfg: dict, vocab: int = VOCAB) -> float:
    """The products of one iteration (forward 1x, backward 2x): input projections,
    recurrences and the head."""
    rows, hidden = cfg["batch_size"] * cfg["seq_length"], cfg["rnn_size"]
    inputs = [cfg["embed_size"]] + [hidden] * (cfg["num_layers"] - 1)
    forward = sum(2 * rows * (i + hidden) * 4 * hidden for i in inputs) + 2 * rows * hidden * vocab
    return 3.0 * forward


def interleaved(rounds: int, rates: dict) -> None:
    for dtype_flag in ("auto", "fp32"):
        runs = {b: trainer_run("cpu", b, dtype_flag) for b in ("auto", "aten")}
        for run in runs.values():
            for _ in range(3):
                train.step(run)
        times = {b: [] for b in runs}
        for _ in range(rounds):
            for b, run in runs.items():
                t = time.perf_counter()
                train.step(run)
                times[b].append(time.perf_counter() - t)
        ratio = statistics.median(a / b for a, b in zip(times["auto"], times["aten"]))
        tflops = rates[runs["auto"].dtype]
        floor = iteration_flops(runs["auto"].cfg) / (tflops * 1e12)
        med = {b: statistics.median(v) for b, v in times.items()}
        print(f"trainer iteration {runs['auto'].dtype}, {torch.get_num_threads()} threads, "
              f"{rounds} rounds: auto {med['auto'] * 1e3:.1f} ms, aten {med['aten'] * 1e3:.1f} ms, "
              f"auto/aten {ratio:.3f} (per-round ratios: {min(a / b for a, b in zip(times['auto'], times['aten'])):.3f}"
              f"-{max(a / b for a, b in zip(times['auto'], times['aten'])):.3f}); floor "
              f"{floor * 1e3:.1f} ms at {tflops} TFLOP/s: auto {med['auto'] / floor:.1f}x it")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tflops", type=float, default=3.5,
                        help="the bf16 rate the floor assumes (default 3.5: oneDNN's best bf16 "
                             "AMX GEMM measured on the AMX Xeon; benchmarks/NOTES.md)")
    parser.add_argument("--fp32-tflops", type=float, default=0.396,
                        help="the fp32 rate (default 0.396: the best fp32 GEMM measured there)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep (the trainer's way): glibc keeps freed memory for reuse; "
                             "default: glibc's own thresholds (torch's LSTM then faults its "
                             "workspace in at every call)")
    args = parser.parse_args()
    if args.malloc == "keep":
        print(f"malloc keeps freed memory: {keep_freed_memory()}")
    interleaved(args.rounds, {"bf16": args.tflops, "fp32": args.fp32_tflops})
