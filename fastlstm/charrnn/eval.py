"""`python -m fastlstm.eval CKPT`: a trained char-rnn's loss on a split or any text file,
in nats per character and bits per character."""
from __future__ import annotations

import argparse
import math
import sys

from . import corpus, data
from .cli import CliError, pick_device, positive_int, run
from .sample import load_model
from .train import evaluate, load_corpus


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastlstm.eval", description=__doc__)
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or --out folder")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="a split of the training corpus (default val)")
    p.add_argument("--text", metavar="FILE", help="evaluate on this file instead")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-length", type=positive_int, default=100)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    device = pick_device(args.device)
    model, vocab, payload, _ = load_model(args.checkpoint, device)
    if args.text:
        text = corpus.open_file(args.text, vocab.encoding, cache=False)
        ids = corpus.ids_in(text, vocab, what=args.text)
        what = args.text
    else:
        cfg = payload["settings"]
        trained_on = load_corpus(cfg)
        if trained_on.digest != payload["corpus_digest"]:
            raise CliError(f"the corpus {trained_on.source} changed since training; its "
                           f"splits are not the ones the model saw (use --text FILE)")
        ids = corpus.ids_in(trained_on, vocab, what=f"corpus {trained_on.source}")
        _, val, test = data.split(ids, cfg["train_frac"], cfg["val_frac"], cfg["val_max_chars"])
        ids = val if args.split == "val" else test
        what = f"the {args.split} split of {trained_on.source}"
    if len(ids) < 2:
        raise CliError(f"{what} has {len(ids)} characters: nothing to evaluate")
    loss = evaluate(model, ids, args.batch_size, args.seq_length, device, None)
    print(f"{what}: {loss:.4f} nats/char, {loss / math.log(2):.4f} bits/char "
          f"({len(ids):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
