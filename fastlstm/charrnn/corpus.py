"""Corpora of any size: encoded once in a streaming pass to the smallest unsigned integer
type that holds the vocabulary (uint8 / uint16 / uint32), cached next to the corpus (or in
a --cache-dir), and memory-mapped for training, so a second run starts without re-encoding
and a corpus larger than memory is never loaded whole.

Cache: `.NAME.ENCODING.fastlstm.npy` (the ids) and `.json` (vocabulary, key, digest). The key
is the corpus' size, mtime and a hash of 16 blocks sampled through it; the digest (a hash of
the whole content, computed while encoding) identifies the text in checkpoints.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .cli import CliError
from .data import Vocab, default_corpus

CHUNK_BYTES = 16 << 20
CACHE_VERSION = 1
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16


@dataclass
class Corpus:
    ids: np.ndarray  # 1-D unsigned ints indexing `vocab`; a read-only memmap for cached files
    vocab: Vocab
    source: str      # what it is, for messages
    digest: str      # identity of the content


def smallest_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory; give one text file")
    if os.path.getsize(path) == 0:
        raise CliError(f"{path} is empty")


def _symbols(path: str, encoding: str):
    """The file's symbols, chunk by chunk: uint8 bytes, or uint32 code points decoded as
    strict UTF-8 (a character split across chunks is decoded whole). Also yields each raw
    chunk for hashing. Bad UTF-8: one CliError saying where."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, lines = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            final = not chunk
            if encoding == "bytes":
                if final:
                    return
                yield chunk, np.frombuffer(chunk, dtype=np.uint8)
                continue
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                with open(path, "rb") as g:
                    line = g.read(at).count(b"\n") + 1 if at < (64 << 20) else lines + 1
                raise CliError(f"{path} is not valid UTF-8 at byte {at} (line {line}): "
                               f"{exc.reason}; use --encoding bytes to train on raw bytes"
                               ) from None
            offset += len(chunk)
            lines += chunk.count(b"\n")
            if text:
                yield chunk, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if final:
                return


def _key(path: str) -> dict:
    stat = os.stat(path)
    sample = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for k in range(SAMPLE_BLOCKS):
            f.seek(stat.st_size * k // SAMPLE_BLOCKS)
            sample.update(f.read(SAMPLE_BYTES))
    return {"version": CACHE_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sample": sample.hexdigest()}


def _vocab(symbols: np.ndarray, encoding: str) -> Vocab:
    if encoding == "bytes":
        return Vocab([int(s) for s in symbols], "bytes")
    return Vocab([chr(int(s)) for s in symbols], "utf-8")


def _encode_file(path: str, encoding: str, out_path: str | None):
    """Two streaming passes: the symbol set (and the content digest), then the ids, written
    to `out_path` as .npy (then ids is None) or kept in memory (out_path None).
    Returns (ids, symbols, digest)."""
    present = np.zeros(256 if encoding == "bytes" else 0x110000, dtype=bool)
    digest, count = hashlib.blake2b(digest_size=16), 0
    for raw, symbols in _symbols(path, encoding):
        present[symbols] = True
        digest.update(raw)
        count += len(symbols)
    symbols = np.flatnonzero(present)
    dtype = smallest_dtype(len(symbols))
    lookup = np.zeros(len(present), dtype=dtype)
    lookup[symbols] = np.arange(len(symbols), dtype=dtype)
    if out_path is None:
        ids, at = np.empty(count, dtype=dtype), 0
        for _, chunk in _symbols(path, encoding):
            ids[at:at + len(chunk)] = lookup[chunk]
            at += len(chunk)
        return ids, symbols, digest.hexdigest()
    # Plain writes, not a writable memmap: its dirty pages would count as this process's
    # resident memory, as large as the corpus.
    with open(out_path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (count,)})
        for _, chunk in _symbols(path, encoding):
            f.write(lookup[chunk].tobytes())
        f.flush()
        os.fsync(f.fileno())
    return None, symbols, digest.hexdigest()


def _cache_paths(path: str, encoding: str, cache_dir: str | None):
    folder = cache_dir or os.path.dirname(os.path.abspath(path))
    stem = os.path.join(folder, f".{os.path.basename(path)}.{encoding}.fastlstm")
    return stem + ".npy", stem + ".json"


def open_file(path: str, encoding: str = "utf-8", cache_dir: str | None = None,
              cache: bool = True, log=print) -> Corpus:
    """A corpus file, from its cache when the cache matches the file, else encoded (and
    cached when `cache` and the cache folder is writable)."""
    _check_file(path)
    npy, meta = _cache_paths(path, encoding, cache_dir)
    key = _key(path)
    if cache and os.path.exists(npy) and os.path.exists(meta):
        try:
            with open(meta) as f:
                info = json.load(f)
            if info.get("key") == key:
                ids = np.load(npy, mmap_mode="r")
                return Corpus(ids, Vocab.from_state(info["vocab"]), path, info["digest"])
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is rebuilt
    if cache:
        folder = os.path.dirname(npy)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".encoding-", suffix=".npy", dir=folder)
            os.close(fd)
        except OSError as exc:
            log(f"note: cannot cache the encoded corpus in {folder} ({exc.strerror}); "
                "encoding in memory (--cache-dir picks another folder)")
            cache = False
    if not cache:
        ids, symbols, digest = _encode_file(path, encoding, None)
        return Corpus(ids, _vocab(symbols, encoding), path, digest)
    log(f"encoding {path} ({key['size']:,} bytes) into {npy} ...")
    try:
        _, symbols, digest = _encode_file(path, encoding, tmp)
        os.replace(tmp, npy)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    vocab = _vocab(symbols, encoding)
    fd, tmp_meta = tempfile.mkstemp(prefix=".meta-", suffix=".json", dir=os.path.dirname(meta))
    with os.fdopen(fd, "w") as f:  # a name of its own: data-parallel ranks may race here
        json.dump({"key": key, "digest": digest, "vocab": vocab.to_state()}, f)
    os.replace(tmp_meta, meta)
    return Corpus(np.load(npy, mmap_mode="r"), vocab, path, digest)


def open_default(encoding: str = "utf-8") -> Corpus:
    """The embedded default (the Python standard library's source), encoded in memory."""
    text, source = default_corpus()
    raw = text.encode("utf-8")
    symbols = (np.frombuffer(raw, dtype=np.uint8) if encoding == "bytes"
               else np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    alphabet = np.unique(symbols)
    ids = np.searchsorted(alphabet, symbols).astype(smallest_dtype(len(alphabet)))
    return Corpus(ids, _vocab(alphabet, encoding), source,
                  hashlib.blake2b(raw, digest_size=16).hexdigest())


def open_corpus(path: str | None, encoding: str = "utf-8", cache_dir: str | None = None,
                cache: bool = True, log=print) -> Corpus:
    if path is None:
        return open_default(encoding)
    return open_file(path, encoding, cache_dir, cache, log)


def ids_in(corpus: Corpus, vocab: Vocab, what: str) -> np.ndarray:
    """The corpus as ids of another vocabulary (a model's): the same array when the
    vocabularies agree, else remapped; symbols the vocabulary lacks: one error naming them."""
    if corpus.vocab.symbols == vocab.symbols and corpus.vocab.encoding == vocab.encoding:
        return corpus.ids
    index = vocab.index()
    missing = [s for s in corpus.vocab.symbols if s not in index]
    if missing:
        vocab.encode(missing, what=what)  # raises, naming them
    remap = np.array([index[s] for s in corpus.vocab.symbols],
                     dtype=smallest_dtype(vocab.size))
    return remap[corpus.ids]
