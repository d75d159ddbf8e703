"""`python -m fastlstm.sample CKPT`: generate text from a trained char-rnn.

CKPT is a checkpoint file or an --out folder (its best.pt). Characters are printed as they
are generated; several samples are drawn together in one batch. On the CPU the whole
model runs in one fused op per 64 characters (fastlstm.ops.generate); on a GPU one step
at a time.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import checkpoint, data
from .cli import CliError, non_negative_float, nucleus, pick_device, positive_int, run
from .model import PRECISIONS, CharRNN, fused_generation, generate


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastlstm.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or --out folder")
    p.add_argument("--length", type=positive_int, default=500, help="characters to generate "
                   "(default 500)")
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="lower is "
                   "safer and more repetitive, higher more surprising; 0 = argmax (default 0.8)")
    p.add_argument("--argmax", action="store_true", help="always the most likely character "
                   "(temperature 0)")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely only")
    p.add_argument("--top-p", type=nucleus, help="nucleus sampling: among the likeliest "
                   "characters whose probabilities sum to P (after --top-k), in (0, 1]")
    p.add_argument("--prime", default=None, help="text to start from (default: a newline)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="samples to draw "
                   "(together, in one batch)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="the CPU's fused "
                   "generation: its products in fp32, or bf16 (about 2x the characters a "
                   "second; needs AVX512-BF16); auto: bf16 where the CPU has it (default)")
    return p


def load_model(path: str, device):
    """(model, vocab, the checkpoint's payload, its path): the file is read once."""
    payload, path = checkpoint.load(path)
    model = CharRNN(**payload["config"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), data.Vocab.from_state(payload["vocab"]), payload, path


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    device = pick_device(args.device)
    model, vocab, _, _ = load_model(args.checkpoint, device)
    try:
        fused_generation(model, args.precision)
    except ValueError as exc:
        raise CliError(f"--precision {args.precision}: {exc}") from None
    if args.prime:
        prime = args.prime.encode("utf-8") if vocab.encoding == "bytes" else args.prime
        prime_ids = vocab.encode(prime, what="--prime")
    else:
        prime = "\n" if vocab.encoding == "utf-8" else b"\n"
        prime_ids = vocab.encode(prime) if prime[0] in vocab.index() else torch.tensor([0])
    gen = torch.Generator(device=device)
    if args.seed is not None:
        gen.manual_seed(args.seed)
    else:
        gen.seed()
    temperature = 0.0 if args.argmax else args.temperature
    stream = args.num_samples == 1 and vocab.encoding == "utf-8"
    out = sys.stdout
    if stream:
        out.write(args.prime or "")
        emit = lambda ids: (out.write(vocab.decode(ids.tolist())), out.flush())  # noqa: E731
    else:
        emit = None
    ids = generate(model, prime_ids, args.length, temperature, args.top_k, args.num_samples,
                   gen, on_ids=emit, top_p=args.top_p, precision=args.precision)
    if stream:
        out.write("\n")
        return 0
    for k in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"--- sample {k + 1} ---\n")
        prefix = args.prime or ""
        out.write(prefix + vocab.decode(ids[k].tolist()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
