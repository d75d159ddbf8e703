"""The char-rnn trainer's whole iteration side by side (pytest-benchmark): `python -m
fastlstm.train`'s own step (fastlstm.charrnn.train.step: learning rate, forward under
autocast, cross-entropy, backward, gradient clipping, AdamW) at its default size (2 x 384,
embedding 64, batch 64 x seq 100, dropout 0.3) on random text of 65 symbols, with the model's
LSTM on `--backend auto` against `--backend aten` (torch's LSTM, the baseline compare.py
divides by). dtype "auto" is the trainer's default (bf16 autocast where the device computes
bf16 natively, else fp32).

  pytest benchmarks/test_bench_trainer.py --bench-device=cpu --benchmark-json=trainer.json
  python benchmarks/compare.py trainer.json
"""
import time

import numpy as np
import pytest
import torch

from fastlstm.charrnn import data, train
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
    run = trainer_run(device, trainer_backend, trainer_dtype)
    benchmark.group = f"trainer iter {run.dtype} {device}"
    benchmark.extra_info.update(shape="trainer", backend=trainer_backend, dtype=run.dtype,
                                pass_="iter", device=device, dtype_flag=trainer_dtype)
    before = run.it
    benchmark.pedantic(lambda: train.step(run), rounds=5 if device == "cpu" else 20,
                       warmup_rounds=2, iterations=1)
    assert run.it > before and all(np.isfinite(r["loss"]) for r in run.history)
