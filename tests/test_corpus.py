"""The corpus cache: streaming encoding, smallest dtype, memory-mapping, invalidation."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fastlstm.charrnn import corpus
from fastlstm.charrnn.cli import CliError


def decode(c):
    return "".join(c.vocab.symbols[i] for i in np.asarray(c.ids))


def test_encodes_caches_and_reuses(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("naïve café ☃ 𝄞\n" * 50, encoding="utf-8")
    logs = []
    first = corpus.open_file(str(path), log=logs.append)
    assert decode(first) == path.read_text(encoding="utf-8")
    assert first.ids.dtype == np.uint8 and isinstance(first.ids, np.memmap)
    assert len(logs) == 1 and "encoding" in logs[0]
    cache = tmp_path / ".text.txt.utf-8.fastlstm.npy"
    stamp = cache.stat().st_mtime_ns
    second = corpus.open_file(str(path), log=logs.append)
    assert len(logs) == 1, "the second open must not re-encode"
    assert cache.stat().st_mtime_ns == stamp and second.digest == first.digest
    assert np.array_equal(np.asarray(second.ids), np.asarray(first.ids))

    time.sleep(0.01)
    path.write_text("naïve café ☃ 𝄞\n" * 50 + "changed!", encoding="utf-8")
    third = corpus.open_file(str(path), log=logs.append)
    assert len(logs) == 2 and third.digest != first.digest
    assert decode(third).endswith("changed!")


def test_cache_dir_and_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 3)
    c = corpus.open_file(str(path), "bytes", cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / ".blob.bin.bytes.fastlstm.npy").exists()
    assert c.vocab.size == 256 and c.ids.dtype == np.uint8
    assert bytes(c.vocab.symbols[i] for i in c.ids) == path.read_bytes()


@pytest.mark.parametrize("symbols,dtype", [(200, np.uint8), (300, np.uint16),
                                           (70000, np.uint32)])
def test_smallest_dtype_for_the_vocabulary(tmp_path, symbols, dtype):
    points = [p for p in range(0x20, 0x20 + symbols + 2048) if not 0xD800 <= p < 0xE000]
    text = "".join(chr(p) for p in points[:symbols])
    path = tmp_path / "wide.txt"
    path.write_text(text * 2, encoding="utf-8")
    c = corpus.open_file(str(path))
    assert c.vocab.size == symbols and c.ids.dtype == dtype
    assert decode(c) == text * 2


def test_characters_split_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 5)  # every multibyte character straddles one
    path = tmp_path / "t.txt"
    text = "aé☃𝄞b" * 30
    path.write_text(text, encoding="utf-8")
    assert decode(corpus.open_file(str(path), cache=False)) == text
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok line\nsecond ☃ ".encode() + b"\xff" + b"tail\n")
    with pytest.raises(CliError, match=r"not valid UTF-8 at byte 19 \(line 2\)"):
        corpus.open_file(str(bad))


def test_remap_to_a_models_vocabulary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabc", encoding="utf-8")
    c = corpus.open_file(str(path))
    model_vocab = corpus.Vocab(list("xcba"), "utf-8")
    ids = corpus.ids_in(c, model_vocab, "t.txt")
    assert "".join(model_vocab.symbols[i] for i in ids) == "abcabc"
    with pytest.raises(CliError, match="'c'"):
        corpus.ids_in(c, corpus.Vocab(list("ab"), "utf-8"), "t.txt")


def test_a_large_corpus_is_never_loaded_whole(tmp_path):
    """~200 MB of text: encoded in a bounded amount of memory, then memory-mapped."""
    path = tmp_path / "big.txt"
    line = "The quick brown fox — naïve café ☃ — jumps over the lazy dog 0123456789.\n" * 64
    block = line.encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(200_000_000 // len(block)):
            f.write(block)
    script = textwrap.dedent(f"""
        import resource, time
        from fastlstm.charrnn import corpus
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.time()
        c = corpus.open_file({str(path)!r}, log=lambda m: None)
        encode_s = time.time() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.time()
        again = corpus.open_file({str(path)!r}, log=lambda m: None)
        reopen_s = time.time() - t
        print(len(c.ids), type(again.ids).__name__, (peak - base) // 1024, encode_s, reopen_s)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    n, kind, extra_mb, encode_s, reopen_s = result.stdout.split()
    size = os.path.getsize(path)
    assert int(n) < size and kind == "memmap"
    assert int(extra_mb) < 300, f"encoding took {extra_mb} MB beyond the imports"
    assert float(reopen_s) < 2.0
    print(f"200 MB corpus: encoded in {float(encode_s):.1f} s, {extra_mb} MB peak above "
          f"imports; cached reopen {float(reopen_s):.3f} s")
