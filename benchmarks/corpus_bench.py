"""Large-corpus benchmark: encode a ~1 GB UTF-8 file (made here if absent), measure time
and peak resident memory; then a training start on the cached corpus (process start to the
first iteration done); then data-loading time per iteration against the step time.

  python benchmarks/corpus_bench.py [--size-mb 1000] [--path /tmp/fastlstm-1gb.txt]
"""
import argparse
import os
import subprocess
import sys
import textwrap
import time

LINE = ("First Citizen: Before we proceed any further, hear me speak — naïve café ☃ "
        "𝄞 «quotes» (brackets) [more] 0123456789\n")


def make(path: str, size_mb: int) -> None:
    block = (LINE * 200).encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(size_mb * (1 << 20) // len(block)):
            f.write(block)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1000)
    p.add_argument("--path", default="/tmp/fastlstm-1gb.txt")
    args = p.parse_args()
    if not os.path.exists(args.path):
        make(args.path, args.size_mb)
    for stale in (".npy", ".json"):
        cache = os.path.join(os.path.dirname(args.path),
                             f".{os.path.basename(args.path)}.utf-8.fastlstm{stale}")
        if os.path.exists(cache):
            os.unlink(cache)
    size = os.path.getsize(args.path)
    encode = textwrap.dedent(f"""
        import resource, time
        from fastlstm.charrnn import corpus
        t = time.time()
        c = corpus.open_file({args.path!r}, log=lambda m: None)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"{{time.time() - t:.1f}} {{peak_mb}} {{len(c.ids)}} {{c.vocab.size}} {{c.ids.dtype}}")
    """)
    out = subprocess.run([sys.executable, "-c", encode], capture_output=True, text=True,
                         check=True).stdout.split()
    print(f"encode {size / 1e9:.2f} GB: {out[0]} s, peak RSS {out[1]} MB (whole process), "
          f"{int(out[2]):,} characters, vocabulary {out[3]} as {out[4]}")

    t = time.time()
    run = subprocess.run([sys.executable, "-m", "fastlstm.train", args.path, "--max-iters", "1",
                          "--val-max-chars", "20000", "--sample-length", "0", "--no-progress",
                          "--out", "/tmp/fastlstm-bench-run-%d" % os.getpid()],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    print(f"cached start: python -m fastlstm.train ... --max-iters 1 took {time.time() - t:.1f} s "
          "(process start, imports, memory-map, one iteration, a 20k-char evaluation, save)")

    timing = textwrap.dedent(f"""
        import time, torch
        import torch.nn.functional as F
        from fastlstm.charrnn import corpus, data
        from fastlstm.charrnn.model import CharRNN
        c = corpus.open_file({args.path!r}, log=lambda m: None)
        batches = data.StreamBatches(c.ids, 64, 100)
        model = CharRNN(c.vocab.size)
        opt = torch.optim.Adam(model.parameters())
        load = step = 0.0
        for k in range(20):
            t0 = time.perf_counter()
            x, y = batches.window(k * 997 % len(batches))
            t1 = time.perf_counter()
            logits, _ = model(x)
            F.cross_entropy(logits.reshape(-1, c.vocab.size), y.reshape(-1)).backward()
            opt.step(); opt.zero_grad()
            t2 = time.perf_counter()
            load, step = load + t1 - t0, step + t2 - t1
        print(f"{{load / 20 * 1e3:.3f}} {{step / 20 * 1e3:.1f}}")
    """)
    load_ms, step_ms = subprocess.run([sys.executable, "-c", timing], capture_output=True,
                                      text=True, check=True).stdout.split()
    print(f"per iteration (batch 64 x 100, 2 x 256): data {load_ms} ms, step {step_ms} ms")


if __name__ == "__main__":
    main()
