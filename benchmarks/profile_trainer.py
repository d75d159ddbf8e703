"""Where the char-rnn trainer's iteration goes, phase by phase (torch.profiler): the trainer's
own step at its default size (test_bench_trainer.trainer_run), a few iterations after
warm-up, ops grouped into phases by name; self CPU time per phase and per iteration.

  python benchmarks/profile_trainer.py [--backend auto|aten] [--dtype auto|fp32] [--iters 5]
"""
import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_trainer import trainer_run  # noqa: E402
from fastlstm.charrnn import train  # noqa: E402

# (phase, substrings of op names), first match wins
# Our layer op runs inside its autograd node (GeneratedBackwardFor_..._default), which the
# profiler charges with the op's self time.
# The training op's backward calls ATen's GEMMs (weight and input gradients) inside it: those
# are counted as GEMMs (self time).
PHASES = [("LSTM recurrence bwd (ours)", ("fastlstm::lstm_layer_backward",
                                          "fastlstm::lstm_layer_train_backward",
                                          "fastlstm::lstm_layer_embedded_backward",
                                          "fastlstm_lstm_layer_embedded_defaultbackward",
                                          "fastlstm_lstm_layer_defaultbackward",
                                          "fastlstm_lstm_layer_train_defaultbackward")),
          ("LSTM recurrence fwd (ours)", ("fastlstm::lstm_layer",
                                          "generatedbackwardfor_fastlstm_lstm_layer")),
          ("dropout", ("dropout", "bernoulli")),
          ("LSTM (torch's, fwd and bwd)", ("rnn", "lstm")),
          ("GEMMs (input projections, head, weight/input gradients)",
           ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
          ("optimizer", ("adam", "_foreach", "optim")),
          ("loss and softmax", ("cross_entropy", "log_softmax", "nll_loss")),
          ("embedding", ("embedding",)),
          ("gradient clipping", ("norm", "clip"))]


def phase_of(name: str) -> str:
    low = name.lower()
    for phase, keys in PHASES:
        if any(k.lower() in low for k in keys):
            return phase
    return "other (copies, casts, elementwise)"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=15, help="also list this many ops")
    args = p.parse_args()
    run = trainer_run("cpu", args.backend, args.dtype)
    for _ in range(2):
        train.step(run)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            train.step(run)
    events = prof.key_averages()
    phases = defaultdict(float)
    for e in events:
        phases[phase_of(e.key)] += e.self_cpu_time_total
    total = sum(phases.values())
    print(f"trainer iteration, backend {args.backend}, {run.dtype}, {torch.get_num_threads()} "
          f"threads: {total / args.iters / 1e3:.1f} ms of self CPU time per iteration")
    for phase, t in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:<58} {t / args.iters / 1e3:8.1f} ms  {100 * t / total:5.1f} %")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
