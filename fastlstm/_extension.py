"""Loading fastlstm._C. Importing fastlstm never fails because of it: when the extension
is missing or was built against another torch, the C++/CUDA backends are unavailable and
backend="auto" falls back to torch's own LSTM with one warning (see warn_unavailable)."""
from __future__ import annotations

import os
import warnings

import torch

REBUILD_HINT = ("rebuild it against the torch you run: "
                "pip install --no-build-isolation --force-reinstall --no-deps .")

_C = None
load_error: str | None = None
try:
    from fastlstm import _C  # registers the fastlstm:: ops
except ImportError as exc:  # not built, or an ABI mismatch (undefined symbol)
    load_error = f"fastlstm._C could not be imported ({exc})"
else:
    if _C.built_with_torch != torch.__version__:
        load_error = (f"fastlstm._C was built with torch {_C.built_with_torch} "
                      f"but torch {torch.__version__} is running")
        _C = None

_warned = False


def available() -> bool:
    return _C is not None


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.cuda_compiled)


# The dtypes the CPU op's fused layer runs on this CPU (read once: asked on every forward).
_CPU_FUSED_DTYPES = frozenset(
    getattr(torch, name) for name in (_C.cpu_fused_dtypes.split(",") if _C is not None else ())
    if name)


def cpu_fused(dtype: torch.dtype) -> bool:
    """Whether the CPU op runs `dtype` on its fused layer here (x86-64 with AVX-512 or AVX2 +
    FMA for float32, AVX512-BF16 for bfloat16; FASTLSTM_CPU_FUSED=0 turns it off;
    FASTLSTM_CPU_ISA=avx2 leaves bfloat16 to the per-step loop)."""
    if dtype == torch.bfloat16 and os.environ.get("FASTLSTM_CPU_ISA") == "avx2":
        return False
    return dtype in _CPU_FUSED_DTYPES and os.environ.get("FASTLSTM_CPU_FUSED", "1") != "0"


_CPU_GENERATE_DTYPES = frozenset(
    getattr(torch, name) for name in (getattr(_C, "cpu_generate_dtypes", "").split(",")
                                      if _C is not None else ()) if name)


def cpu_generate(dtype: torch.dtype) -> bool:
    """Whether fastlstm.ops.generate runs `dtype` here (x86-64 with AVX-512, and AVX512-BF16
    for bfloat16)."""
    return dtype in _CPU_GENERATE_DTYPES


_cpu_class: str | None = None


def cpu_class() -> str:
    """What backend="auto"'s CPU rule keys on (module.py), from the CPU's flags as Linux
    reports them: "amx" (AMX-BF16 that fastlstm._C may use), "avx512_bf16" (AVX512-BF16 without
    AMX), "avx512" (AVX-512 without either), "avx2", or "other" (anything else, or flags that
    cannot be read)."""
    global _cpu_class
    if _cpu_class is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(next((line.split(":", 1)[1].split() for line in f
                                  if line.startswith("flags")), []))
        except OSError:
            flags = set()
        if "amx_bf16" in flags and (_C is None or not _C.cpu_amx()):
            flags.discard("amx_bf16")  # AMX the kernel does not let us use: not our class
        _cpu_class = next((name for name, flag in (("amx", "amx_bf16"),
                                                     ("avx512_bf16", "avx512_bf16"),
                                                     ("avx512", "avx512f"), ("avx2", "avx2"))
                           if flag in flags), "other")
    return _cpu_class


def warn_unavailable() -> None:
    """The one warning backend="auto" gives when it falls back."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"{load_error}; FastLSTM falls back to torch's own LSTM. To get the fused "
                      f"kernels, {REBUILD_HINT}", RuntimeWarning, stacklevel=3)


def require(backend: str) -> None:
    if _C is None:
        raise RuntimeError(f'FastLSTM backend="{backend}" needs the compiled extension, but '
                           f"{load_error}; {REBUILD_HINT}")
