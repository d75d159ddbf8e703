"""The README's speed chart from pytest-benchmark JSON files: for every group (shape x pass x
dtype) each FastLSTM backend's speed relative to torch's own LSTM in the same run (cuDNN on
a GPU, nn.LSTM's CPU kernel "aten" on a CPU): its median time divided into torch's. One panel
per file, titled with the machine it ran on.

  python benchmarks/speed_chart.py --out docs/speed.png \\
      "CPU: <name>, 2 cores=benchmarks/results/<cpu run>/bench.json" \\
      "GPU: NVIDIA H200 (run 7)=benchmarks/results/<gpu run>/bench1.json"

Each positional argument is LABEL=PATH[,PATH...]: with several runs of the same grid, each
time is the median of the runs' medians (one sequential run on a shared machine can be off by
tens of percent). Only backends named in --backends are drawn."""
import argparse
import json
import statistics
from collections import defaultdict

BASELINES = ("cudnn", "aten")  # torch's LSTM, as test_bench_lstm.py names it
SHAPE_ORDER = ("S1", "S2", "S3", "charrnn", "B8", "step")
COLOURS = {"auto": "#1f77b4", "cpu": "#9ecae1", "cuda": "#2ca02c", "cuda_persistent": "#98df8a",
           "triton": "#ff7f0e"}


def speedups(paths, backends):
    """{(shape, pass, dtype): {backend: torch's time / the backend's}} over one or more JSONs
    of the same grid (a time: the median of the runs' medians)."""
    seen = defaultdict(lambda: defaultdict(list))
    for path in paths:
        with open(path) as f:
            for bench in json.load(f)["benchmarks"]:
                info = bench["extra_info"]
                seen[(info["shape"], info["pass_"], info["dtype"])][info["backend"]].append(
                    bench["stats"]["median"])
    medians = {group: {b: statistics.median(ts) for b, ts in times.items()}
               for group, times in seen.items()}
    out = {}
    for group, times in medians.items():
        base = next((times[b] for b in BASELINES if b in times), None)
        if base is not None:
            out[group] = {b: base / t for b, t in times.items() if b in backends}
    return out


def order(group):
    shape, pass_, dtype = group
    rank = SHAPE_ORDER.index(shape) if shape in SHAPE_ORDER else len(SHAPE_ORDER)
    return rank, shape, pass_ != "fwd", dtype


def draw(panels, backends, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    sizes = [len(groups) for _, groups in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 0.34 * max(sizes) + 1.6),
                             squeeze=False)
    for ax, (label, groups) in zip(axes[0], panels):
        names = sorted(groups, key=order)
        drawn = [b for b in backends if any(b in groups[g] for g in names)]
        height = 0.8 / max(len(drawn), 1)
        for k, backend in enumerate(drawn):
            ys = [i + (k - (len(drawn) - 1) / 2) * height for i in range(len(names))]
            xs = [groups[g].get(backend, float("nan")) for g in names]
            ax.barh(ys, xs, height=height, color=COLOURS.get(backend), label=backend, left=0)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([" ".join(g) for g in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("speed vs torch's LSTM (x, log scale; right of 1 = faster)")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH[,PATH...]", help="a panel: its "
                   "title and one or more pytest-benchmark JSONs of benchmarks/test_bench_lstm.py")
    p.add_argument("--backends", default="auto,cpu,cuda,cuda_persistent,triton",
                   help="backends to draw (default: %(default)s)")
    p.add_argument("--out", default="docs/speed.png", help="the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    backends = args.backends.split(",")
    panels = []
    for run in args.runs:
        label, sep, path = run.rpartition("=")
        if not sep or not label:
            p.error(f"{run!r} is not LABEL=PATH")
        groups = speedups(path.split(","), backends)
        if not groups:
            p.error(f"{path}: no group has torch's LSTM ({' or '.join(BASELINES)}) to compare to")
        panels.append((label, groups))
    draw(panels, backends, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
