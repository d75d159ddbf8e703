"""A/B of an env switch, interleaved: layers (cpu_interleaved.make) and the trainer step.
python env_ab.py VAR VALUE_A VALUE_B --shapes charrnn,S3 --rounds 11 [--trainer]
[--backend B] [--packed] [--malloc keep] (the last three added on 2026-12-06, session7; defaults as
before: auto, dense, glibc's own malloc thresholds)"""
import argparse, os, sys, time, statistics as st
sys.path.insert(0, "benchmarks")
import torch
p = argparse.ArgumentParser()
p.add_argument("var"); p.add_argument("a"); p.add_argument("b")
p.add_argument("--shapes", default="charrnn,S3,B8,S1"); p.add_argument("--rounds", type=int, default=11)
p.add_argument("--dtype", default="bf16"); p.add_argument("--pass_", default="train")
p.add_argument("--trainer", action="store_true")
p.add_argument("--backend", default="auto"); p.add_argument("--packed", action="store_true")
p.add_argument("--malloc", choices=["default", "keep"], default="default")
args = p.parse_args()
if args.malloc == "keep":
    from fastlstm.charrnn.cli import keep_freed_memory
    keep_freed_memory()
def setv(v):
    if v == "unset": os.environ.pop(args.var, None)
    else: os.environ[args.var] = v
cases = {}
if args.trainer:
    from test_bench_trainer import trainer_run
    from fastlstm.charrnn import train
    for dt in args.dtype.split(","):
        runs = {"auto": trainer_run("cpu", "auto", "auto" if dt == "bf16" else "fp32"),
                "aten": trainer_run("cpu", "aten", "auto" if dt == "bf16" else "fp32")}
        cases[f"trainer {dt}"] = {"A": (args.a, lambda r=runs["auto"]: train.step(r)),
                                  "B": (args.b, lambda r=runs["auto"]: train.step(r)),
                                  "aten": (args.a, lambda r=runs["aten"]: train.step(r))}
else:
    from cpu_interleaved import make, shape_of
    for name in args.shapes.split(","):
        for dt in args.dtype.split(","):
            cases[f"{name} {dt} {args.pass_}"] = {"A": (args.a, make(shape_of(name), args.backend, dt, args.pass_, packed=args.packed)),
                                 "B": (args.b, make(shape_of(name), args.backend, dt, args.pass_, packed=args.packed)),
                                 "aten": (args.a, make(shape_of(name), "aten", dt, args.pass_))}
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; A: {args.var}={args.a}, B: {args.var}={args.b}")
for name, vs in cases.items():
    for v, f in vs.values():
        setv(v); f(); f()
    times = {k: [] for k in vs}
    for _ in range(args.rounds):
        for k, (v, f) in vs.items():
            setv(v); t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: st.median(t) for k, t in times.items()}
    ra = st.median(a / b for a, b in zip(times["A"], times["aten"]))
    rb = st.median(a / b for a, b in zip(times["B"], times["aten"]))
    rab = st.median(b / a for a, b in zip(times["A"], times["B"]))
    print(f"{name:22s} A {med['A']*1e3:8.2f} ms ({ra:.3f})  B {med['B']*1e3:8.2f} ms ({rb:.3f})  aten {med['aten']*1e3:8.2f} ms   B/A {rab:.3f}")
