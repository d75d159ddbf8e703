"""Checkpoints: written atomically, loadable with torch.load(weights_only=True), tensors on
the CPU (a GPU-trained model samples on a CPU machine)."""
from __future__ import annotations

import os
import tempfile

import torch

from .cli import CliError

FORMAT = "fastlstm-charrnn"
VERSION = 1


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save(path: str, payload: dict) -> None:
    """Temp file in the same folder, flush, fsync, rename over `path`, fsync the folder:
    an interrupted write leaves the old checkpoint whole."""
    payload = dict(payload, format=FORMAT, version=VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(to_cpu(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def resolve(path: str, prefer: str = "best.pt") -> str:
    """A checkpoint file, or an --out folder meaning its `prefer` checkpoint (else last.pt)."""
    if os.path.isdir(path):
        for name in (prefer, "last.pt", "best.pt"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CliError(f"{path} holds no checkpoint (no {prefer} or last.pt)")
    if not os.path.exists(path):
        raise CliError(f"{path}: no such checkpoint")
    return path


def load(path: str, prefer: str = "best.pt") -> tuple[dict, str]:
    path = resolve(path, prefer)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or unsafe pickled code
        raise CliError(f"{path} is not a readable fastlstm checkpoint "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CliError(f"{path} is not a fastlstm char-rnn checkpoint")
    if payload.get("version") != VERSION:
        raise CliError(f"{path} is a version {payload.get('version')} checkpoint; this "
                       f"fastlstm reads version {VERSION}")
    return payload, path
