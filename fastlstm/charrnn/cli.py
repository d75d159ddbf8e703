"""Shared by the command-line tools: one-line errors and argument types."""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys


class CliError(Exception):
    """A user-facing problem: printed as one line, exit code 2, no traceback."""


def run(main, argv=None) -> int:
    """Call main(argv); turn a CliError into one line on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except CliError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank says it
            print(f"error: {exc}", file=sys.stderr)
        return 2


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def learning_rate(text: str) -> float:
    value = positive_float(text)
    if value > 1000:  # beyond this Adam's step size overflows float32 before any loss does
        raise argparse.ArgumentTypeError(f"must be at most 1000, got {text}")
    return value


def probability(text: str) -> float:
    """A dropout probability: 0 <= p < 1."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def nucleus(text: str) -> float:
    """A top-p mass: 0 < p <= 1."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def fraction(text: str) -> float:
    """A share of the corpus: 0 < f < 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def pick_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA GPU is visible to torch")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it
    back to the system. By default it maps every block over a moving threshold afresh and
    trims the heap's free top, so each training iteration faults its large buffers in again,
    page by page, and the kernel zeroes every page: torch's own LSTM on the CPU faulted in
    ~270 MB an iteration of the trainer's default model, 214 ms against 160 ms without
    (benchmarks/NOTES.md, "malloc"). The trainer's process holds its peak memory anyway.
    Process-wide; returns whether it applied (glibc only: elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
