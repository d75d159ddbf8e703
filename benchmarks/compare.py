"""Turn a pytest-benchmark JSON into a table: median time per backend and its ratio to
the baseline (onnxruntime, else cudnn, else aten) of the same group, and to torch's own
(aten) where that is not the baseline. Ratio < 1 means faster. Generation groups also get
characters a second.

  python benchmarks/compare.py bench.json
"""
import json
import sys
from collections import defaultdict

BASELINES = ("onnxruntime", "cudnn", "aten")


def table(path):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    chars = {}  # generation benchmarks: characters per call, for a chars/s column
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        groups[bench["group"]][info["backend"]] = bench["stats"]["median"]
        if "chars" in info:
            chars[bench["group"]] = info["chars"]
    lines = [f"{'group':<32} {'backend':<17} {'median ms':>10} {'vs base':>8} {'vs aten':>8}"
             + ("  chars/s" if chars else "")]
    ratios = defaultdict(list)  # backend -> [(ratio, group)]
    for group in sorted(groups):
        times = groups[group]
        base = next((times[b] for b in BASELINES if b in times), None)
        for backend, t in sorted(times.items()):
            ratio = f"{t / base:.2f}" if base else "-"
            aten = times.get("aten")
            vs_aten = f"{t / aten:.2f}" if aten and base != aten else "-"
            rate = f"  {chars[group] / t:>7.0f}" if group in chars else ""
            lines.append(f"{group:<32} {backend:<17} {t * 1e3:>10.3f} {ratio:>8} {vs_aten:>8}"
                         f"{rate}")
            if base and backend not in BASELINES:
                ratios[backend].append((t / base, group))
    if ratios:
        lines.append("")
        lines.append("worst ratio per backend (its group), over the groups with a baseline:")
        for backend, seen in sorted(ratios.items()):
            worst, group = max(seen)
            lines.append(f"  {backend:<17} {worst:.2f}  ({group})")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(sys.argv[1]))
