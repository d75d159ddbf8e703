"""`python -m fastlstm.train [CORPUS]`: train a character-level LSTM language model.

Give it one text file; it learns to write like it. Without a file it trains on the Python
standard library's own source. Every --eval-every iterations it prints the validation
loss and a sample, and writes last.pt / best.pt, log.jsonl and loss.png into --out.
Ctrl-C saves and says how to resume; --resume continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import _extension
from . import checkpoint, data
from . import corpus as corpus_mod
from .cli import (CliError, fraction, keep_freed_memory, learning_rate, non_negative_float,
                  non_negative_int, pick_device, positive_float, positive_int, probability, run)
from .distributed import Ranks
from .model import CharRNN, generate

# Defaults measured with benchmarks/quality.py (600 s on the 2-core CPU, tinyshakespeare):
# 2 x 384 with dropout 0.3, cosine decay and lr 3e-3 reached 1.4331 nats/char (lr 2e-3:
# 1.4505, 4e-3: 1.4385); 2 x 256 1.4586-1.4643; with weight decay 0.1 on the matrices 1.4282
# (0.2: 1.4284). On the AMX Xeon (~5000 iterations in the time) those overfit from ~2000
# iterations on; 2 x 512 with --weight-drop 0.3 (DropConnect on W_hh): 1.3862-1.3878.
# benchmarks/NOTES.md.
ARCH = {"num_layers": 2, "rnn_size": 512, "embed_size": 64, "dropout": 0.3,
        "weight_drop": 0.3}
TRAINING = {"batch_size": 64, "seq_length": 100, "optimizer": "adam", "lr": 3e-3,
            "lr_decay": "cosine", "lr_decay_after": 10, "lr_decay_rate": 0.97,
            "min_lr": 1e-4, "weight_decay": 0.1, "grad_clip": 5.0, "max_iters": None,
            "max_epochs": 50, "time_budget": None, "eval_every": 500, "sample_length": 200,
            "seed": 1234, "device": "auto", "backend": "auto", "dtype": "auto", "compile": False,
            "encoding": "utf-8", "train_frac": 0.9, "val_frac": 0.05, "val_max_chars": None,
            "cache_dir": None, "out": "out"}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU of compute capability 8.0
    or later, or a CPU with AMX-BF16 or AVX512-BF16: its class as auto reads it
    (_extension.cpu_class), or whether fastlstm's fused CPU layer runs bf16 here (it asks the
    CPU itself). torch's own check (mkldnn's bf16 support) says yes for any AVX-512 CPU, with
    or without them."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return (_extension.cpu_fused(torch.bfloat16)
            or _extension.cpu_class() in ("amx", "avx512_bf16"))


def resolve_dtype(name: str, device: torch.device) -> str:
    """--dtype auto: bf16 autocast where the device does bf16 natively, else fp32."""
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastlstm.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Over- or underfitting? Watch train vs val loss (docs/charrnn.md: 'Reading the loss').")
    p.add_argument("corpus", nargs="?", help="a UTF-8 text file (default: the embedded "
                   "Python standard library source)")
    add_data_and_model_flags(p)
    add_optimisation_flags(p)
    add_output_and_hardware_flags(p)
    return p


def add_data_and_model_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--encoding", choices=["utf-8", "bytes"], help="read the corpus as "
                   "UTF-8 characters, or as raw bytes of any file (default utf-8)")
    d.add_argument("--train-frac", type=fraction, help="share of the corpus for training "
                   "(default 0.9)")
    d.add_argument("--val-frac", type=fraction, help="share for validation, right after the "
                   "training part (default 0.05); test gets the rest")
    d.add_argument("--val-max-chars", type=positive_int, help="cap the validation split at "
                   "this many characters, so a huge corpus evaluates fast (default: no cap)")
    d.add_argument("--cache-dir", help="where the encoded corpus is cached (default: next to "
                   "the corpus); a second run on the same file starts without re-encoding")
    m = p.add_argument_group("model (fixed by a checkpoint when resuming)")
    m.add_argument("--model", choices=["lstm"], default="lstm", help="the cell (lstm)")
    m.add_argument("--num-layers", type=positive_int, help="LSTM layers (default 2)")
    m.add_argument("--rnn-size", type=positive_int, help="hidden units per layer (default 512)")
    m.add_argument("--embed-size", type=positive_int, help="character embedding size "
                   "(default 64)")
    m.add_argument("--dropout", type=probability, help="dropout between layers and before "
                   "the decoder, in [0, 1) (default 0.3)")
    m.add_argument("--weight-drop", type=probability, help="dropout on the recurrent "
                   "weights W_hh (DropConnect: one mask per iteration, the same at every "
                   "step), in [0, 1); 0 = off (default 0.3)")


def add_optimisation_flags(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=positive_int, help="parallel streams (default 64)")
    o.add_argument("--seq-length", type=positive_int, help="characters per truncated-BPTT "
                   "window (default 100)")
    o.add_argument("--optimizer", choices=["adam", "rmsprop"], help="(default adam)")
    o.add_argument("--lr", type=learning_rate, help="learning rate (default 3e-3)")
    o.add_argument("--lr-decay", choices=["charrnn", "cosine", "none"], help="charrnn: "
                   "x--lr-decay-rate per epoch after --lr-decay-after epochs; cosine: to "
                   "--min-lr over the run: at its last iteration, or at the end of "
                   "--time-budget if that comes first (default cosine)")
    o.add_argument("--lr-decay-after", type=non_negative_int, help="(default 10 epochs)")
    o.add_argument("--lr-decay-rate", type=fraction, help="(default 0.97)")
    o.add_argument("--min-lr", type=non_negative_float, help="cosine's final lr (default 1e-4)")
    o.add_argument("--weight-decay", type=non_negative_float, help="weight decay of the "
                   "weight matrices (embedding, LSTM, decoder; never biases): decoupled from "
                   "the gradient for adam (AdamW), an L2 term for rmsprop; 0 = off (default "
                   f"{TRAINING['weight_decay']})")
    o.add_argument("--grad-clip", type=non_negative_float, help="clip the global gradient "
                   "norm to this, 0 = off (default 5)")
    o.add_argument("--max-iters", type=positive_int, help="stop after this many iterations")
    o.add_argument("--max-epochs", type=positive_float, help="stop after this many passes "
                   "over the training split (default 50)")
    o.add_argument("--time-budget", type=positive_float, help="stop after this many seconds "
                   "of training (then evaluate and save)")
    o.add_argument("--seed", type=int, help="random seed (default 1234)")


def add_output_and_hardware_flags(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("output")
    r.add_argument("--eval-every", type=positive_int, help="iterations between validation, "
                   "sample and checkpoint (default 500)")
    r.add_argument("--sample-length", type=non_negative_int, help="characters of the sample "
                   "printed at each evaluation (default 200)")
    r.add_argument("--out", help="folder for checkpoints and logs (default ./out)")
    r.add_argument("--resume", metavar="DIR_OR_CKPT", help="continue a run exactly "
                   "(a folder means its last.pt)")
    r.add_argument("--init-from", metavar="CKPT", help="start from these weights (fine-tuning)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    h = p.add_argument_group("hardware")
    h.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default auto)")
    h.add_argument("--backend", choices=["auto", "cuda", "triton", "cpu", "cudnn", "aten",
                                         "reference"], help="FastLSTM backend (default auto)")
    h.add_argument("--dtype", choices=["auto", *DTYPES], help="autocast dtype; weights stay "
                   "fp32. auto (the default): bf16 where the device computes in bf16 natively "
                   "(CUDA compute capability >= 8.0; a CPU with AMX-BF16 or AVX512-BF16), "
                   "else fp32; the choice is printed at start")
    h.add_argument("--compile", action="store_true", default=None, help="torch.compile the "
                   "model")
    h.add_argument("--return-freed-memory", action="store_true", help="on the CPU, let "
                   "malloc return freed memory to the system at once (glibc's default: each "
                   "iteration then faults its large buffers in again; torch's LSTM takes "
                   "~1.35x the time). By default the trainer has glibc keep it for reuse")


def settings(args, saved: dict | None) -> dict:
    """Flags given now, else the resumed run's, else the defaults."""
    merged = dict(ARCH, **TRAINING)
    if saved:
        merged["weight_decay"] = 0.0  # runs saved before the flag had none: resume as they were
        merged.update(saved)
    merged.update({k: v for k, v in vars(args).items() if v is not None and k in merged})
    return merged


def check_arch(args, config: dict, what: str) -> None:
    for name in ARCH:
        given = getattr(args, name)
        saved = config.get(name, 0.0)  # (weight_drop: absent in runs saved before it)
        if given is not None and given != saved:
            flag = "--" + name.replace("_", "-")
            raise CliError(f"{what} has {flag} {saved}, but {flag} {given} was given; "
                           f"drop the flag or start a new --out")


def prepare_out(out: str, rank: int = 0) -> None:
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{rank}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise CliError(f"cannot write to --out {out}: {exc.strerror}") from None


def load_corpus(cfg: dict, log=print) -> corpus_mod.Corpus:
    """The run's corpus (cached and memory-mapped for a file; the embedded default else)."""
    return corpus_mod.open_corpus(cfg.get("corpus"), cfg["encoding"], cfg.get("cache_dir"),
                                  log=log)


def parameter_groups(model) -> tuple[list[int], list[int]]:
    """Indices (in model.parameters() order) of the weight matrices, which weight decay
    shrinks, and of the biases, which it leaves alone."""
    dims = [p.dim() for p in model.parameters()]
    return ([i for i, d in enumerate(dims) if d >= 2], [i for i, d in enumerate(dims) if d < 2])


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (AdamW) or RMSprop with L2; two parameter groups:
    the weight matrices with cfg's weight decay, the biases without."""
    params = list(model.parameters())
    groups = [{"params": [params[i] for i in idx], "weight_decay": decay}
              for idx, decay in zip(parameter_groups(model), (cfg["weight_decay"], 0.0))]
    if cfg["optimizer"] == "adam":
        # torch's fused kernel on the CPU: one pass over each parameter (2 x 384: 0.8 ms a
        # step against 9.5 for the per-op "foreach" path, AMX Xeon).
        return torch.optim.Adam(groups, lr=cfg["lr"], decoupled_weight_decay=True,
                                fused=_fused_adam(params))
    return torch.optim.RMSprop(groups, lr=cfg["lr"])


def _fused_adam(params) -> bool | None:
    return True if all(p.device.type == "cpu" for p in params) else None


def load_optimizer(optimizer, model, saved: dict, cfg: dict) -> None:
    """A saved optimizer state into make_optimizer's; one saved before the groups existed
    (one group, in parameter order) is split the same way. The weight decay is cfg's: a
    resumed run may change it."""
    if len(saved["param_groups"]) == 1:
        group = saved["param_groups"][0]
        ids = group["params"]
        saved = dict(saved, param_groups=[dict(group, params=[ids[i] for i in idx])
                                          for idx in parameter_groups(model)])
    optimizer.load_state_dict(saved)
    for group, decay in zip(optimizer.param_groups, (cfg["weight_decay"], 0.0)):
        group["weight_decay"] = decay
        if "decoupled_weight_decay" in group:
            group["decoupled_weight_decay"] = True
        if "fused" in group:  # the kernel is this run's choice, not the saved run's
            group["fused"] = optimizer.defaults.get("fused")


def lr_at(cfg: dict, iteration: int, epoch: int, total_iters: int | None,
          time_spent: float = 0.0) -> float:
    """The learning rate at `iteration`. Cosine decays over the run: to the last iteration,
    or to the end of --time-budget if that comes first (time_spent: its fraction used)."""
    if cfg["lr_decay"] == "charrnn":
        return cfg["lr"] * cfg["lr_decay_rate"] ** max(0, epoch - cfg["lr_decay_after"])
    if cfg["lr_decay"] == "cosine" and total_iters:
        progress = min(1.0, max(iteration / total_iters, time_spent))
        span = cfg["lr"] - cfg["min_lr"]
        return cfg["min_lr"] + 0.5 * span * (1 + math.cos(math.pi * progress))
    return cfg["lr"]


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, batch: int, seq: int, device, amp_dtype) -> float:
    """Mean cross-entropy (nats/char) over a whole split, read as carried-state windows."""
    batch = max(1, min(batch, (len(ids) - 1) // (seq + 1) or 1))
    seq = min(seq, len(ids) // batch - 1)
    windows = data.StreamBatches(ids, batch, seq)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for k in range(len(windows)):
        x, y = (t.to(device) for t in windows.window(k))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


def plot(history: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [(h["iter"], h["loss"]) for h in history if "loss" in h]
    val = [(h["iter"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=0.7, alpha=0.6, label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.resume and args.init_from:
        raise CliError("--resume and --init-from exclude each other")
    saved = None
    if args.resume:
        saved, saved_path = checkpoint.load(args.resume, prefer="last.pt")
        check_arch(args, saved["config"], saved_path)
        if args.corpus is None:
            args.corpus = saved["settings"].get("corpus")
        if args.out is None:
            args.out = os.path.dirname(os.path.abspath(saved_path))
    cfg = settings(args, saved["settings"] if saved else None)
    cfg["corpus"] = args.corpus
    device = pick_device(cfg["device"])
    if device.type == "cpu" and not args.return_freed_memory:
        keep_freed_memory()
    ranks = Ranks(device.type)
    try:
        return train(args, cfg, saved, saved_path if saved else None, ranks, device)
    finally:
        ranks.close()


@dataclass
class Run:
    """One training run in one process: what set-up made, and the progress the loop moves
    (saved in every checkpoint: it, epoch, window, best_val, history, carry)."""
    args: argparse.Namespace
    cfg: dict
    ranks: Ranks
    device: torch.device
    dtype: str                        # fp32, bf16 or fp16 (--dtype auto resolved)
    amp_dtype: torch.dtype | None     # autocast's dtype; None: fp32
    say: Callable
    source: str = ""                  # the corpus's name
    corpus_digest: str = ""
    vocab: data.Vocab | None = None
    ids: Any = None                   # the whole corpus as ids
    config: dict = field(default_factory=dict)  # the model's architecture
    init: dict | None = None          # the checkpoint --init-from names
    train_ids: Any = None
    val_ids: Any = None
    rows: Any = None                  # this rank's streams of the global batch
    batches: data.StreamBatches | None = None
    total_iters: int = 0
    model: Any = None
    step_model: Any = None            # the model as the step calls it (compiled, DDP)
    optimizer: Any = None
    scaler: Any = None
    it: int = 0
    epoch: int = 0
    window: int = 0                   # the next window of the epoch
    best_val: float = math.inf
    history: list = field(default_factory=list)
    carry: tuple | None = None        # the LSTM state carried from window to window
    started: float = 0.0              # when this process began training
    chars_done: int = 0               # by this process's steps, all ranks counted


def train(args, cfg, saved, saved_path, ranks, device) -> int:
    """The run itself, in every data-parallel process (one without torchrun): set-up (or
    resume), then steps until the first end (iterations, --time-budget, Ctrl-C), evaluating
    and saving every --eval-every iterations and at the end."""
    run = set_up(args, cfg, saved, ranks, device)
    load_data(run, saved)
    build_model(run)
    if saved:
        resume(run, saved, saved_path)
    elif args.init_from:
        run.model.load_state_dict(run.init["model"])
        run.say(f"starting from the weights of {args.init_from}")
    wrap_model(run)
    announce(run)
    return loop(run)


def set_up(args, cfg, saved, ranks, device) -> Run:
    """Checks that need no data: --out writable and free (unless resuming), the device for
    this rank, the dtype, the batch split over the ranks; seeds this rank's RNG."""
    say = print if ranks.main else (lambda *a, **k: None)
    prepare_out(cfg["out"], ranks.rank)
    if not saved:
        for name in ("last.pt", "best.pt"):
            if os.path.exists(os.path.join(cfg["out"], name)):
                raise CliError(f"{cfg['out']} already holds a run ({name}); continue it with "
                               f"--resume {cfg['out']}, or choose another --out")
    if device.type == "cuda" and ranks.active:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(cfg["dtype"], device)
    if device.type == "cpu" and dtype == "fp16":
        raise CliError("--dtype fp16 needs --device cuda (torch's CPU LSTM has no fp16 kernel); "
                       "on the CPU use --dtype bf16 or fp32")
    if cfg["batch_size"] % ranks.world:
        raise CliError(f"--batch-size {cfg['batch_size']} does not split evenly over "
                       f"{ranks.world} processes; make it a multiple of {ranks.world}")
    torch.manual_seed(cfg["seed"] + ranks.rank)  # each rank its own dropout masks
    return Run(args=args, cfg=cfg, ranks=ranks, device=device, dtype=dtype,
               amp_dtype=DTYPES[dtype], say=say)


def load_data(run: Run, saved: dict | None) -> None:
    """The corpus as ids in the run's vocabulary (a resumed or --init-from checkpoint's, else
    the corpus's own), split, and cut into this rank's streams."""
    cfg, args = run.cfg, run.args
    corpus = load_corpus(cfg, log=run.say)
    run.source, run.corpus_digest = corpus.source, corpus.digest
    if saved or args.init_from:
        run.init = saved or checkpoint.load(args.init_from)[0]
        if args.init_from:
            check_arch(args, run.init["config"], args.init_from)
        run.vocab = data.Vocab.from_state(run.init["vocab"])
        run.ids = corpus_mod.ids_in(corpus, run.vocab, what=f"corpus {run.source}")
        run.config = dict(run.init["config"])
    else:
        run.vocab, run.ids = corpus.vocab, corpus.ids
        run.config = dict(vocab_size=run.vocab.size, **{k: cfg[k] for k in ARCH})
    if saved and saved.get("corpus_digest") != run.corpus_digest:
        raise CliError(f"the corpus {run.source} is not the text this run was trained on; "
                       f"--resume needs the same text (use --init-from to fine-tune on new text)")
    run.train_ids, run.val_ids, _ = data.split(run.ids, cfg["train_frac"], cfg["val_frac"],
                                               cfg["val_max_chars"])
    need = data.min_chars(cfg["batch_size"], cfg["seq_length"])
    if len(run.train_ids) < need:
        raise CliError(f"the training split has {len(run.train_ids)} characters, fewer than the "
                       f"{need} one batch needs (--batch-size {cfg['batch_size']} x "
                       f"(--seq-length {cfg['seq_length']} + 1)); lower --batch-size or "
                       f"--seq-length, or give a larger corpus")
    if len(run.val_ids) < 2:
        raise CliError(f"the validation split has {len(run.val_ids)} characters; raise "
                       f"--val-frac (now {cfg['val_frac']}) or give a larger corpus")
    run.rows = run.ranks.rows(cfg["batch_size"])
    run.batches = data.StreamBatches(run.train_ids, cfg["batch_size"], cfg["seq_length"],
                                     run.rows)
    run.total_iters = cfg["max_iters"] or int(math.ceil(cfg["max_epochs"] * len(run.batches)))


def build_model(run: Run) -> None:
    run.model = CharRNN(backend=run.cfg["backend"], **run.config).to(run.device)
    run.optimizer = make_optimizer(run.model, run.cfg)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.dtype == "fp16")


def resume(run: Run, saved: dict, saved_path: str) -> None:
    """The model, optimizer, progress, carried state and RNG of a checkpoint: with the same
    number of processes the run goes on exactly as if it had not stopped."""
    run.model.load_state_dict(saved["model"])
    load_optimizer(run.optimizer, run.model, saved["optimizer"], run.cfg)
    if saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    progress = saved["progress"]
    run.it, run.epoch, run.window, run.best_val = (progress["iter"], progress["epoch"],
                                                   progress["window"], progress["best_val"])
    run.history = list(saved["history"])
    # The saved carried state covers the global batch: take this rank's streams.
    run.carry = (tuple(t[:, run.rows].to(run.device) for t in saved["carry"])
                 if saved["carry"] else None)
    ranks, per_rank = run.ranks, saved["rng"]["per_rank"]
    if len(per_rank) == ranks.world:  # the same number of processes: exactly as before
        torch.set_rng_state(per_rank[ranks.rank]["cpu"])
        if run.device.type == "cuda" and per_rank[ranks.rank].get("cuda") is not None:
            torch.cuda.set_rng_state(per_rank[ranks.rank]["cuda"], run.device)
    else:  # another world size: new dropout streams, the rest as saved
        torch.manual_seed(run.cfg["seed"] + 7919 * run.it + ranks.rank)
    run.say(f"resuming {saved_path} at iteration {run.it} (epoch {run.epoch})"
            + (f" on {ranks.world} processes" if ranks.active else ""))


def wrap_model(run: Run) -> None:
    """What the step calls: the model, compiled with --compile, in DDP under torchrun."""
    run.step_model = torch.compile(run.model) if run.cfg["compile"] else run.model
    if run.ranks.active:
        from torch.nn.parallel import DistributedDataParallel
        run.step_model = DistributedDataParallel(
            run.step_model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def announce(run: Run) -> None:
    cfg, config, ranks = run.cfg, run.config, run.ranks
    nparams = sum(p.numel() for p in run.model.parameters())
    run.say(f"corpus: {run.source} ({len(run.ids):,} characters, vocabulary {run.vocab.size}, "
            f"stored as {run.ids.dtype}); "
            f"train {len(run.train_ids):,} / val {len(run.val_ids):,}")
    run.say(f"model: {config['num_layers']} x {config['rnn_size']} LSTM, {nparams:,} "
            f"parameters, on {run.device} in {run.dtype}"
            f"{' (--dtype auto)' if cfg['dtype'] == 'auto' else ''}"
            f"{f' x {ranks.world} processes' if ranks.active else ''}; "
            f"{len(run.batches)} iterations per epoch; writing to {cfg['out']}")


def loop(run: Run) -> int:
    """Steps until the first end; Ctrl-C (any rank's) ends at the next step with a save."""
    cfg, ranks = run.cfg, run.ranks
    log = open(os.path.join(cfg["out"], "log.jsonl"), "a") if ranks.main else None
    stop = {"signal": False}

    def on_sigint(signum, frame):
        stop["signal"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    bar = progress_bar(run)
    run.started, run.chars_done, first_it = time.time(), 0, run.it
    run.model.train()
    try:
        while run.it < run.total_iters:
            record = step(run)
            if log:
                log.write(json.dumps(record) + "\n")
            update_bar(run, bar, record, first_it)
            out_of_time = (bool(cfg["time_budget"])
                           and time.time() - run.started >= cfg["time_budget"])
            # Every rank takes the same branch: rank 0's clock and any rank's Ctrl-C decide.
            out_of_time, stop["signal"] = ranks.any(out_of_time, stop["signal"])
            if (run.it % cfg["eval_every"] == 0 or run.it == run.total_iters or out_of_time
                    or stop["signal"]):
                evaluate_and_save(run, record, log, bar)
            if stop["signal"]:
                if ranks.main:
                    bar.close()
                    print(f"interrupted at iteration {run.it}; saved {cfg['out']}/last.pt. "
                          f"Resume with:\n  python -m fastlstm.train --resume {cfg['out']}")
                return 130
            if out_of_time:
                break
    finally:
        signal.signal(signal.SIGINT, old_handler)
        bar.close()
        if log:
            log.close()
    run.say(f"done at iteration {run.it}: best val {run.best_val:.4f} nats/char "
            f"({run.best_val / math.log(2):.4f} bits/char); checkpoints in {cfg['out']}")
    return 0


def step(run: Run) -> dict:
    """One training iteration on the next window (a new epoch starts from fresh state):
    learning rate, forward, loss, backward, clip, optimizer step. Returns its log record."""
    cfg, ranks = run.cfg, run.ranks
    if run.window >= len(run.batches):
        run.epoch, run.window, run.carry = run.epoch + 1, 0, None
    time_spent = 0.0
    if cfg["lr_decay"] == "cosine" and cfg["time_budget"]:
        # Rank 0's clock for every rank: all must step with the same lr.
        time_spent = ranks.first(float(time.time() - run.started) / cfg["time_budget"])
    lr = lr_at(cfg, run.it, run.epoch, run.total_iters, time_spent)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x, y = (t.to(run.device) for t in run.batches.window(run.window))
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits, state = run.step_model(x, run.carry)
    loss = F.cross_entropy(logits.float().reshape(-1, run.vocab.size), y.reshape(-1))
    global_loss = ranks.mean(loss).item()  # all ranks see the same value
    if not math.isfinite(global_loss):
        raise CliError(f"the loss became {global_loss} at iteration {run.it + 1}; stopped, and "
                       f"{cfg['out']}/last.pt keeps the last good state. Lower --lr "
                       f"(now {cfg['lr']}) or --grad-clip (now {cfg['grad_clip']})")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg["grad_clip"] > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg["grad_clip"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.carry = tuple(s.detach() for s in state)
    run.it, run.window = run.it + 1, run.window + 1
    run.chars_done += x.numel() * ranks.world
    record = {"iter": run.it, "epoch": run.epoch, "loss": global_loss, "lr": lr}
    run.history.append(record)
    return record


def progress_bar(run: Run):
    from tqdm import tqdm
    return tqdm(total=run.total_iters, initial=run.it, unit="it", dynamic_ncols=True,
                disable=run.args.no_progress or not run.ranks.main, file=sys.stderr)


def update_bar(run: Run, bar, record: dict, first_it: int) -> None:
    """Loss and characters a second; under --time-budget the bar's total is the iteration at
    which this process runs out of time (at its rate so far) when that comes before the
    last iteration, so that its ETA says when the run will really end."""
    elapsed = max(time.time() - run.started, 1e-9)
    budget = run.cfg["time_budget"]
    if budget and run.it > first_it:
        by_time = first_it + (run.it - first_it) * budget / elapsed
        bar.total = max(run.it, min(run.total_iters, int(math.ceil(by_time))))
    bar.set_postfix(loss=f"{record['loss']:.3f}", chars_s=f"{run.chars_done / elapsed:,.0f}",
                    refresh=False)
    bar.update(1)


def evaluate_and_save(run: Run, record: dict, log, bar) -> None:
    """Every rank hands in its carried state and RNG (collectives); rank 0 evaluates,
    samples and writes last.pt (and best.pt on a new best), log.jsonl and loss.png; then all
    meet at a barrier."""
    cfg, ranks = run.cfg, run.ranks
    full_carry = [ranks.cat_rows(t, dim=1) for t in run.carry]  # collective
    rng = ranks.gather({"cpu": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(run.device)
                        if run.device.type == "cuda" else None})
    if not ranks.main:
        ranks.barrier()
        return
    val = evaluate(run.model, run.val_ids, cfg["batch_size"], cfg["seq_length"], run.device,
                   run.amp_dtype)
    entry = {"iter": run.it, "epoch": run.epoch, "val_loss": val, "val_bpc": val / math.log(2)}
    run.history.append(entry)
    log.write(json.dumps(entry) + "\n")
    log.flush()
    bar.write(f"iter {run.it} (epoch {run.epoch}): train {record['loss']:.4f}, val "
              f"{val:.4f} nats/char = {entry['val_bpc']:.4f} bits/char")
    if cfg["sample_length"] > 0:
        show_sample(run.model, run.vocab, cfg, run.it, bar)
    if val < run.best_val:
        run.best_val = val
        checkpoint.save(os.path.join(cfg["out"], "best.pt"), payload(run, full_carry, rng))
    checkpoint.save(os.path.join(cfg["out"], "last.pt"), payload(run, full_carry, rng))
    plot(run.history, os.path.join(cfg["out"], "loss.png"))
    ranks.barrier()


def payload(run: Run, full_carry, rng_per_rank) -> dict:
    """A checkpoint: everything --resume needs to go on exactly (checkpoint.py writes it)."""
    return {"config": run.config, "vocab": run.vocab.to_state(),
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "settings": dict(run.cfg),
            "progress": {"iter": run.it, "epoch": run.epoch, "window": run.window,
                         "best_val": run.best_val},
            "history": run.history, "carry": full_carry, "rng": {"per_rank": rng_per_rank},
            "corpus_digest": run.corpus_digest}


def show_sample(model, vocab, cfg, it, bar) -> None:
    """A sample at temperature 0.8, printed as it is drawn, from a generator of its own, so
    that sampling never moves the training RNG (a resumed run draws the same dropout masks)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg["seed"] + it)
    start = vocab.index().get("\n" if vocab.encoding == "utf-8" else 10, 0)
    out = sys.stdout
    with bar.external_write_mode():
        out.write("--- sample ---\n")
        generate(model, torch.tensor([start]), cfg["sample_length"], 0.8, generator=gen,
                 on_ids=lambda ids: (out.write(vocab.decode(ids.tolist())), out.flush()))
        out.write("\n--------------\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(run(main))
