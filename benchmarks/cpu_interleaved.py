"""FastLSTM's CPU paths against torch's own LSTM, interleaved: each round runs every variant
once, in turn, so the slow drifts of a shared machine fall on all of them alike; prints the
median time of each and the median of its per-round ratio to torch's. What auto's CPU rule
(fastlstm/module.py) and benchmarks/NOTES.md's grid come from. 2 layers, input = hidden
unless given, fp32 and bf16 (autocast over an fp32 module, as the trainer runs it), inference
(no_grad) and a training step (forward + backward to the input and every parameter).

  python benchmarks/cpu_interleaved.py                        # the grid: hidden x batch, seq 50
  python benchmarks/cpu_interleaved.py --shapes charrnn,S3,B8,step --loop
  python benchmarks/cpu_interleaved.py --shapes H512B1S1,H256B8S2   # short sequences
  python benchmarks/cpu_interleaved.py --passes fwd --rounds 41       # inference only
  ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FASTLSTM_CPU_ISA=avx2 \
      python benchmarks/cpu_interleaved.py --loop --dtypes fp32 --cpu-class avx2
                                            # an AVX2-only CPU, imitated (fp32 only)
  python benchmarks/cpu_interleaved.py --packed --shapes P1,P2    # PackedSequence input
  python benchmarks/cpu_interleaved.py --malloc keep --faults     # glibc keeping freed memory

torch's LSTM depends on the process's malloc: under glibc's defaults it faults its workspace
in afresh at most calls (the kernel zeroing every page), and how many depends on what the
process freed before; with freed memory kept for reuse (`--malloc keep`, as the trainer runs,
or GLIBC_TUNABLES raising glibc.malloc.mmap_threshold and trim_threshold) it does not. Ours
faults little either way. benchmarks/NOTES.md gives both.
"""
import argparse
import os
import resource
import statistics
import time

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastlstm import FastLSTM, _extension
from fastlstm.charrnn.cli import keep_freed_memory

# name: (layers, hidden, batch, seq, input size)
NAMED = {"S1": (2, 512, 64, 100, 512), "S3": (2, 128, 50, 50, 128),
         "charrnn": (2, 256, 64, 100, 64), "B8": (2, 256, 8, 50, 256), "step": (2, 512, 1, 1, 512),
         "P1": (2, 256, 32, 100, 256), "P2": (2, 128, 8, 60, 128)}  # (P: issue 27's packed)


def packed_lengths(batch, seq):
    """Lengths uniform in [seq / 5, seq], the same for every variant (a fixed seed)."""
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    return torch.randint(max(1, seq // 5), seq + 1, (batch,), generator=g)


def shape_of(name):
    if name in NAMED:
        return NAMED[name]
    # "H256B8": hidden 256, batch 8, seq 50; "H256B8S1": seq 1
    hidden, rest = name[1:].split("B")
    batch, _, seq = rest.partition("S")
    return 2, int(hidden), int(batch), int(seq or 50), int(hidden)


def make(shape, backend, dtype, pass_, fused_layer=True, packed=False, bidirectional=False):
    layers, hidden, batch, seq, inputs = shape
    torch.manual_seed(0)
    lstm = FastLSTM(inputs, hidden, layers, backend=backend, bidirectional=bidirectional)
    dirs = 2 if bidirectional else 1
    x = torch.randn(seq, batch, inputs, requires_grad=pass_ == "train")
    inp, leaf = x, x
    if packed:  # unsorted lengths, as pack_padded_sequence(enforce_sorted=False) gives them
        data, sizes, sorted_idx, unsorted_idx = pack_padded_sequence(
            x.detach(), packed_lengths(batch, seq), enforce_sorted=False)
        leaf = data.requires_grad_(pass_ == "train")
        inp = PackedSequence(leaf, sizes, sorted_idx, unsorted_idx)
    h0, c0 = (torch.randn(layers * dirs, batch, hidden) for _ in range(2))
    params = list(lstm.parameters())
    amp = dtype == "bf16"
    data_of = lambda out: out.data if packed else out  # noqa: E731

    def run():
        os.environ["FASTLSTM_CPU_FUSED"] = "1" if fused_layer else "0"
        if pass_ == "fwd":
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                lstm(inp, (h0, c0))
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out, (h, c) = lstm(inp, (h0, c0))
            torch.autograd.grad(data_of(out).float().sum() + h.float().sum(), [leaf, *params])
    return run


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def compare(name, dtype, pass_, variants, rounds, faults=False, **kwargs):
    runs = {k: make(shape_of(name), v[0], dtype, pass_, *v[1:], **kwargs)
            for k, v in variants.items()}
    for run in runs.values():
        run()
        run()
    times = {k: [] for k in runs}
    faulted = dict.fromkeys(runs, 0)
    for _ in range(rounds):
        for k, run in runs.items():
            before = minor_faults()
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
            faulted[k] += minor_faults() - before
    cells = []
    for k in runs:
        ratio = statistics.median(a / b for a, b in zip(times[k], times["aten"]))
        cells.append(f"{k} {statistics.median(times[k]) * 1e3:8.2f} ms ({ratio:.2f})"
                     + (f" {faulted[k] / rounds:7.0f} faults" if faults else ""))
    print(f"{name:8s} {dtype} {pass_:5s}: " + "  ".join(cells), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(f"H{h}B{b}" for h in (128, 256, 512)
                                                 for b in (1, 2, 4, 8, 16, 32)),
                   help="named (S1,S3,charrnn,B8,step) or H<hidden>B<batch>[S<seq>] (seq 50 "
                   "unless given)")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (default both; an "
                   "imitated AVX2 CPU, ONEDNN_MAX_CPU_ISA=AVX2, has no bf16 LSTM)")
    p.add_argument("--passes", default="fwd,train", help="fwd (inference, no_grad) and/or "
                   "train (default both)")
    p.add_argument("--loop", action="store_true",
                   help="also the C++ op with its fused layer off (FASTLSTM_CPU_FUSED=0)")
    p.add_argument("--packed", action="store_true",
                   help="PackedSequence input, lengths uniform in [seq / 5, seq], unsorted")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--malloc", choices=["default", "keep"], default="default",
                   help="default: glibc's own thresholds; keep: glibc keeps freed memory for "
                   "reuse (fastlstm.charrnn.cli.keep_freed_memory, as the trainer runs)")
    p.add_argument("--faults", action="store_true",
                   help="also the minor page faults a call took (4 KiB each, zeroed by the kernel)")
    p.add_argument("--cpu-class", help="the CPU class auto's rule takes (fastlstm._extension."
                   "cpu_class; default: this CPU's); with the env above, an imitated CPU")
    args = p.parse_args()
    if args.cpu_class:
        _extension._cpu_class = args.cpu_class
    if args.malloc == "keep" and not keep_freed_memory():
        p.error("--malloc keep: not glibc here")
    variants = {"cpu": ("cpu", True)}
    if args.loop:
        variants["cpu_loop"] = ("cpu", False)
    variants["auto"] = ("auto", True)
    variants["aten"] = ("aten", True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; malloc {args.malloc}; "
          f"ratio = median of per-round time / aten's{'; packed input' if args.packed else ''}"
          f"{'; bidirectional' if args.bidirectional else ''}; cpu class {_extension.cpu_class()}")
    imitation = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                            "FASTLSTM_CPU_ISA") if k in os.environ}
    if imitation:
        print("env:", " ".join(f"{k}={v}" for k, v in imitation.items()))
    for name in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            for pass_ in args.passes.split(","):
                compare(name, dtype, pass_, variants, args.rounds, faults=args.faults,
                        packed=args.packed, bidirectional=args.bidirectional)


if __name__ == "__main__":
    main()
