"""Vocabulary, the embedded default corpus, splits and the carried-state batching of
char-rnn (reading and caching corpus files: corpus.py).

A corpus is UTF-8 text read as code points (a multibyte character is one symbol, never
split), or with encoding="bytes" any file's raw bytes. The vocabulary is the sorted set of
symbols, stored with the model. Splits are contiguous: train, then validation, then test.
"""
from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

import numpy as np
import torch

from .cli import CliError

DEFAULT_CORPUS_CAP = 2_000_000  # characters of the embedded default corpus


@dataclass
class Vocab:
    symbols: list  # str characters, or ints 0-255 for the bytes encoding
    encoding: str  # "utf-8" or "bytes"

    @property
    def size(self) -> int:
        return len(self.symbols)

    def index(self) -> dict:
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, text, what="text") -> torch.Tensor:
        """text: str (utf-8) or bytes (bytes). Unknown symbols: one error naming them."""
        table = self.index()
        unknown = sorted({s for s in text if s not in table}, key=str)
        if unknown:
            shown = ", ".join(repr(s if isinstance(s, str) else chr(s)) for s in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise CliError(f"{what} has characters the model's vocabulary lacks: {shown}{more}")
        return torch.tensor([table[s] for s in text], dtype=torch.long)

    def decode(self, ids) -> str:
        if self.encoding == "bytes":
            return bytes(self.symbols[i] for i in ids).decode("utf-8", errors="replace")
        return "".join(self.symbols[i] for i in ids)

    def to_state(self) -> dict:
        symbols = "".join(self.symbols) if self.encoding == "utf-8" else list(self.symbols)
        return {"symbols": symbols, "encoding": self.encoding}

    @classmethod
    def from_state(cls, state: dict) -> "Vocab":
        return cls(list(state["symbols"]), state["encoding"])


def default_corpus(cap: int = DEFAULT_CORPUS_CAP):
    """The Python standard library's own .py files in sorted path order, up to `cap`
    characters: text that exists on every machine (the 2015 post trained on Linux's source).
    Returns (text, description)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "__pycache__"))
        files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".py")]
    parts, total, used = [], 0, 0
    for path in sorted(files, key=lambda p: os.path.relpath(p, root)):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        take = text[:cap - total]
        parts.append(take)
        total += len(take)
        used += 1
        if total >= cap:
            break
    if not parts:
        raise CliError(f"no Python source found under {root} for the default corpus; "
                       "give a corpus file")
    return "".join(parts), f"{used} source files of the Python standard library in {root}"


def split(ids, train_frac: float, val_frac: float, val_max: int | None = None):
    """Contiguous train / val / test (views, never copies); test gets what is left. The
    validation part can be capped at `val_max` characters (a huge corpus evaluates fast)."""
    n = len(ids)
    n_train = int(n * train_frac)
    n_val = int(n * val_frac)
    val_end = n_train + n_val
    return ids[:n_train], ids[n_train:n_train + min(n_val, val_max or n_val)], ids[val_end:]


class StreamBatches:
    """char-rnn's batching: the ids (a numpy array, memory-mapped or not) cut into `batch`
    parallel streams, read in windows of `seq` characters, window after window, so that
    the LSTM state carried from one window to the next belongs to the text before it.
    `rows` picks a slice of the streams (one data-parallel rank's share)."""

    def __init__(self, ids, batch: int, seq: int, rows: slice = slice(None)):
        stream_len = len(ids) // batch
        self.windows = (stream_len - 1) // seq
        self.streams = np.asarray(ids[:batch * stream_len]).reshape(batch, stream_len)[rows]
        self.seq = seq

    def __len__(self):
        return self.windows

    def window(self, k: int):
        """Inputs and targets of window k: two int64 [rows, seq] tensors (only this window
        is read from the corpus)."""
        start = k * self.seq
        chunk = torch.from_numpy(self.streams[:, start:start + self.seq + 1].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def min_chars(batch: int, seq: int) -> int:
    """The fewest characters that make one window of `batch` streams."""
    return batch * (seq + 1)
