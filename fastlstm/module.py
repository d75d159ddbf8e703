"""FastLSTM and FastLSTMCell: drop-in nn.LSTM / nn.LSTMCell with a choice of backend.

Parameter names, shapes, initialisation and state_dict are nn.LSTM's / nn.LSTMCell's, so
weights load both ways; forward has the same contract and error types. backend=
  "auto"       the fastest verified path for the input (see _auto_path)
  "reference"  fastlstm.reference, plain PyTorch (slow; the oracle)
  "cpu"        the fused C++ op on CPU tensors
  "cuda"       the fused CUDA op on CUDA tensors
  "triton"     the Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)
  "cudnn"/"aten"  torch's own nn.LSTM (cuDNN on GPU, ATen/oneDNN on CPU), for comparisons
What the fused op does not support (proj_size, a dtype the device's op lacks, PackedSequence
input outside the fused CPU layer) goes to torch's own LSTM, never to a wrong answer.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.weak import WeakIdKeyDictionary

from . import _extension, ops
from .reference import lstm_cell_reference, reference_lstm

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton", "cudnn", "aten")
FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


# parameter -> (its version, dtype, the parameter in that dtype); see _cast. Keyed by
# identity (a WeakKeyDictionary would compare tensors with ==).
_CASTS = WeakIdKeyDictionary()


def _cast(p, dtype):
    """Parameter p in the compute dtype. Without autograd the cast is kept until p changes
    (its version, or its fingerprint: ops.weight_fingerprint, as after a fused optimizer's
    step): an inference loop under autocast then casts each weight once, and the CPU op,
    which keeps what it packed for the very tensor it was given, packs each once."""
    if p is None or p.dtype == dtype:
        return p
    if (torch.is_grad_enabled() and p.requires_grad) or torch.compiler.is_compiling():
        return p.to(dtype)
    kept, key = _CASTS.get(p), (p._version, dtype, ops.weight_fingerprint(p))
    if kept is not None and kept[0] == key:
        return kept[1]
    cast = p.to(dtype)
    _CASTS[p] = (key, cast)
    return cast


def _onnx_exporting_resolver():
    """torch.onnx.is_in_onnx_export, without its two imports per call (~1 us each, on every
    forward): the flags it reads, looked up once; torch's own function where they moved."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    # Under torch.compile, torch's own function (dynamo knows it; not these flags).
    return lambda: (torch.onnx.is_in_onnx_export() if torch.compiler.is_compiling()
                    else GLOBALS.in_onnx_export or _flags._is_onnx_exporting)


_onnx_exporting = _onnx_exporting_resolver()


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown FastLSTM backend {backend!r}; choose one of "
                         f"{', '.join(BACKENDS)}")
    return backend


def compute_dtype(data):
    """The dtype the LSTM runs in: autocast's, where autocast is on, like nn.LSTM."""
    device = data.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return data.dtype


def _fused_unsupported(data, proj_size=0, packed=False, dtypes_by_device=None):
    """Why the fused op (or the Triton one, given its dtypes) cannot take this input."""
    if proj_size > 0:
        return "proj_size > 0"
    if packed:  # the fused CPU layer only (cuDNN runs packed input natively on GPUs)
        dtype = compute_dtype(data)
        if data.device.type != "cpu":
            return f"PackedSequence input on {data.device.type} tensors"
        if dtype not in (torch.float32, torch.bfloat16):
            return f"PackedSequence input in {dtype}"
        if not _extension.cpu_fused(dtype):
            return (f"PackedSequence input in {dtype} on this CPU (the fused layer needs "
                    "AVX-512, or AVX2 + FMA for float32; AVX512-BF16 for bfloat16)")
    dtypes = (dtypes_by_device or FUSED_DTYPES).get(data.device.type)
    if dtypes is None:
        return f"{data.device.type} tensors"
    if compute_dtype(data) not in dtypes:
        return f"{compute_dtype(data)} on {data.device.type}"
    return None


# backend="auto" on CPU tensors: our op where it measured faster than torch's own (oneDNN)
# LSTM, keyed on what the CPU has (_extension.cpu_class()); a class of CPU not measured keeps
# torch's LSTM. Two regimes: the fused layer (sequences of >= 4 steps, fp32/bf16, AVX-512;
# bf16 needs AVX512-BF16 too) and the per-step loop (shorter sequences: FastLSTMCell,
# sampling). Ratios ours/torch's, 2 layers, input = hidden, seq 50 unless said; the tables
# and commands are in benchmarks/NOTES.md (python benchmarks/cpu_interleaved.py).
CPU_FUSED_MIN_STEPS = 4  # as the C++ op's kMinSteps
CPU_FUSED_MIN_HIDDEN = 256  # the per-step loop's rule
CPU_FUSED_MAX_BATCH = 8


def _cpu_rule_avx512_bf16(dtype, grad, steps, batch, hidden):
    """AVX512-BF16 without AMX; measured on an AMD Zen 4 (2 cores; 2026-12-06 with freed
    memory kept, 11-15 interleaved rounds, benchmarks/NOTES.md):
    bf16 training     0.39-0.93 at batch <= 32 (hidden 128-512), 0.85-1.02 at batch 64:
                      always ours.
    bf16 inference    (x W_ih^T computed in the step) 0.63-0.91 at batch
                      <= 8 (hidden 128-1024), 0.80-0.90 at hidden 128 batch 16; 0.93-1.03 at
                      batch >= 16 otherwise (S3, char-rnn shape): torch's there.
    fp32 inference    0.65-0.91 at batch <= 8 (hidden 128-1024; two cells 1.03-1.08 in one
                      turn, 0.78-0.97 in others); with even row blocks (2026-12-07, two grids)
                      0.85-1.00 at batch 16-64 (hidden 128-512, S3, char-rnn shape, S1):
                      ours to hidden 512 (hidden 1024 at batch >= 16 not measured).
    fp32 training     with the weight gradients on our tile (2026-12-07): 0.78-0.98 at
                      batch <= 8 (hidden 128-512), 0.88-0.96 at hidden 128 batch 16-64 and S3;
                      0.93-1.08 at hidden >= 256, batch >= 16 (char-rnn shape 0.98-1.01, S1
                      1.08): torch's there.
    short calls       (< 4 steps) without gradient: _streaming_rule_avx512_bf16.
    per-step loop     (< 4 steps, training; 2026-12-03) fp32/fp64 at hidden >= 256 and batch
                      <= 8 (0.4-0.9x); its bf16 GEMMs go through ATen one step at a time:
                      torch's."""
    if steps >= CPU_FUSED_MIN_STEPS and _extension.cpu_fused(dtype):
        if dtype == torch.bfloat16:
            return grad or batch <= 8 or (hidden <= 128 and batch <= 16)
        return batch <= 8 or hidden <= 128 or (not grad and hidden <= 512)
    if dtype == torch.bfloat16:
        return False
    return hidden >= CPU_FUSED_MIN_HIDDEN and batch <= CPU_FUSED_MAX_BATCH


def _cpu_rule_amx(dtype, grad, steps, batch, hidden):
    """AMX-BF16: our bf16 products on AMX tiles too (lstm_cpu_fused.h); measured on an Intel
    Xeon, family 6 model 207 (2 cores, 2026-12-05):
    bf16 training     0.24-0.81 at every batch 1-64 and hidden 128-512 (char-rnn shape 0.81,
                      2 x 384 batch 64 seq 100 0.76): always ours.
    bf16 inference    0.35-0.97 at batch <= 8, and at hidden <= 256 for any batch (char-rnn
                      shape 0.92); since the epilogue runs beside the tiles (2026-12-06):
                      char-rnn shape 0.67-0.69, hidden 384-1024 at batch 16-64 0.58-0.95
                      (it was 0.85-1.21 there): always ours.
    fp32 training     (the training op: lstm_layer_train) 0.66-0.89 at hidden <= 256 (any
                      batch 1-64), 0.69-0.78 at batch <= 4 (hidden up to 512), 0.83-0.92 at
                      batch >= 32 (hidden 384-512); hidden 384-1024 at batch 8-16: 0.99-1.06:
                      torch's there. Those figures are under glibc's default malloc, where
                      torch's LSTM faults its workspace in at every call; with freed memory
                      kept (2026-12-06) the char-rnn shape is 1.00-1.06 and 2 x 512 b64 s100
                      1.04-1.06, the grid's cases 0.58-0.97 (benchmarks/NOTES.md, "malloc").
    fp32 inference    (the input projection as one GEMM first, where the op does so)
                      0.38-0.93 at batch <= 4 (hidden 64-1024), 0.69-0.89 at hidden 256,
                      batch <= 8, 0.66-0.85 at hidden <= 128, batch <= 16; 0.98-1.14 at
                      larger batches (2 x 128, batch 50: ~1.1 in the pytest grid).
    per-step loop     (< 4 steps, training) fp32 and bf16 at hidden >= 256 and batch <= 8:
                      0.36-0.89. Short calls without gradient: _streaming_rule_amx.
    Longer sequences without the fused layer, and fp64: not measured: torch's."""
    if steps >= CPU_FUSED_MIN_STEPS:
        if not _extension.cpu_fused(dtype):
            return False
        if dtype == torch.bfloat16:
            return True
        if grad:
            return hidden <= 256 or batch <= 4 or batch >= 32
        return batch <= 4 or (hidden <= 256 and batch <= 8) or (hidden <= 128 and batch <= 16)
    return (dtype in (torch.float32, torch.bfloat16) and hidden >= CPU_FUSED_MIN_HIDDEN
            and batch <= CPU_FUSED_MAX_BATCH)


def _cpu_rule_avx2(dtype, grad, steps, batch, hidden):
    """AVX2 + FMA without AVX-512: fp32 on the fused layer's AVX2 build. Measured on an AMD
    Zen 4 imitating such a CPU (ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2,
    FASTLSTM_CPU_ISA=avx2; 2 cores, 2026-12-06, 7 interleaved rounds, freed memory kept):
    fp32              0.55-0.90 at batch <= 2 (hidden 128-512), 0.70-0.80 at hidden 128
                      batch <= 8; 0.85-1.25 elsewhere (char-rnn shape 1.04-1.22): torch's.
    fp32 inference    (x W_ih^T computed in the step) also 0.75-0.86 at
                      hidden 128 batch 16-64; hidden 256-512 batch 4-16 0.98-1.21: torch's.
    short calls       (< 4 steps) without gradient: _streaming_rule_avx2.
    per-step loop     (< 4 steps, training; imitated on the AMX Xeon, 2026-12-05) fp32 at
                      hidden >= 256 and batch <= 8: 0.10-0.79.
    bf16 (not native on such CPUs) and fp64: not measured: torch's."""
    if dtype != torch.float32:
        return False
    if steps >= CPU_FUSED_MIN_STEPS:
        return _extension.cpu_fused(dtype) and (
            batch <= 2 or (hidden <= 128 and (batch <= 8 or (not grad and batch <= 64))))
    return hidden >= CPU_FUSED_MIN_HIDDEN and batch <= CPU_FUSED_MAX_BATCH


def _streaming_rule_amx(dtype, steps, batch, hidden):
    """Short calls (< 4 steps) without gradient, on ops.stack_inference; measured on the AMX
    Xeon above (2026-12-05; hidden 16-1024, batch 1-64, 1 and 3 steps): ours/torch's
    fp32   0.08-0.66 at batch x steps <= 16; 0.28-0.89 at hidden <= 256 (any batch);
           1.01-1.02 at hidden 512, batch >= 16, 3 steps: torch's there.
    bf16   (AMX tiles) 0.05-0.62 everywhere: always ours."""
    if dtype == torch.float32:
        return batch * steps <= 16 or hidden <= 256
    return dtype == torch.bfloat16


def _streaming_rule_avx512_bf16(dtype, steps, batch, hidden):
    """Short calls (< 4 steps) without gradient, on ops.stack_inference; measured on an AMD
    Zen 4 (2 cores, 2026-12-06; hidden 64-1024, batch 1-64, 1 and 3 steps): ours/torch's
    fp32 0.16-0.85, bf16 0.13-0.78, largest at batch 64 and 3 steps: always ours."""
    return dtype in (torch.float32, torch.bfloat16)


def _streaming_rule_avx2(dtype, steps, batch, hidden):
    """Short calls (< 4 steps) without gradient, on ops.stack_inference's AVX2 build; measured
    on the imitation above (15 rounds; hidden 64-1024, batch 1-64, 1 and 3 steps): fp32
    0.21-0.78 at hidden <= 128, at batch x steps <= 4 and at hidden 256 batch 4; hidden 256
    batch >= 16 0.92-1.00, hidden 512-1024 batch 4 with 3 steps and batch >= 16 0.98-1.94:
    torch's there. bf16: not measured: torch's."""
    return dtype == torch.float32 and (hidden <= 128 or batch * steps <= 4
                                       or (hidden <= 256 and batch <= 4))


CPU_RULES = {"avx512_bf16": _cpu_rule_avx512_bf16, "amx": _cpu_rule_amx, "avx2": _cpu_rule_avx2}
# Rules with a regime of their own for streaming calls; the other classes' short calls keep
# their rule (where it takes our op, ops.stack_inference runs the call: not yet measured
# against the per-step loop on those CPUs).
STREAMING_RULES = {"amx": _streaming_rule_amx, "avx512_bf16": _streaming_rule_avx512_bf16,
                   "avx2": _streaming_rule_avx2}


def _packed_rule(dtype, grad, steps, batch, hidden):
    """PackedSequence input (ops.lstm_layer_packed against torch's packed LSTM), measured on
    an Intel Xeon with AMX-BF16, family 6 model 207 (2 cores, 2026-12-06; 2 layers, hidden
    64-512, batch 1-64, seq 50, and 2 x 256 b32 s100, 2 x 128 b8 s60; lengths uniform in
    [seq / 5, seq]), ours/torch's:
    AMX        training 0.10-0.31 at batch >= 4, 0.51-0.80 at batch 1 (fp32 and bf16);
               inference bf16 0.10-0.40 at batch >= 4, fp32 0.30-0.70, batch 1 0.59-0.94.
    AVX-512 (+BF16) without AMX, imitated there (oneDNN held to AVX512_CORE_BF16, our AMX
               off; our bf16 register tile is 5x slower on that Xeon than on a Zen 4, so
               this is ours at its worst): 0.15-0.85 everywhere, fp32 0.17-0.81.
    Always ours (the dtypes the fused layer runs here)."""
    return True


# Rules for PackedSequence input; a class without one (AVX2 and older: no fused layer) keeps
# torch's packed LSTM.
PACKED_RULES = {"amx": _packed_rule, "avx512_bf16": _packed_rule, "avx512": _packed_rule}


def _cpu_auto_fused(dtype, grad, steps, batch, hidden, streaming=False, packed=False):
    """Whether auto takes our op for CPU tensors of this compute dtype and shape; `grad`:
    whether a backward will follow (training); `streaming`: a short call without gradient
    that ops.stack_inference runs (a class's rule may weigh it apart); `packed`: a
    PackedSequence (batch its largest batch, steps its length)."""
    cls = _extension.cpu_class()
    if packed:
        rule = PACKED_RULES.get(cls)
        return rule is not None and rule(dtype, grad, steps, batch, hidden)
    if streaming and cls in STREAMING_RULES:
        return STREAMING_RULES[cls](dtype, steps, batch, hidden)
    rule = CPU_RULES.get(cls)
    return rule is not None and rule(dtype, grad, steps, batch, hidden)


# backend="auto" on CUDA tensors uses the CUDA op (CUDA-graph replay) for bfloat16 at hidden
# <= 512: on an H200 it took 0.23-0.86x the time of torch's bf16 LSTM at every benchmarked
# shape (hidden 128 and 512, batch 1-100, seq 1-100; fwd and fwd+bwd; runs 5 and 7), and
# passed every GPU test (run 7). fp32 stays on cuDNN (0.73-2.5x: not faster everywhere),
# fp16 too (not benchmarked), and hidden > 512 (not measured). benchmarks/NOTES.md.
CUDA_FUSED_DTYPES = (torch.bfloat16,)
CUDA_FUSED_MAX_HIDDEN = 512


def _auto_path(data, unsupported, batch, hidden, steps, grad, streaming=False, packed=False):
    if not _extension.available():
        _extension.warn_unavailable()
        return "aten"
    if unsupported:
        return "aten"
    if data.is_cuda:
        if (_extension.cuda_compiled() and compute_dtype(data) in CUDA_FUSED_DTYPES
                and hidden <= CUDA_FUSED_MAX_HIDDEN):
            return "fused"
        return "aten"
    if _cpu_auto_fused(compute_dtype(data), grad, steps, batch, hidden, streaming, packed):
        return "fused"
    if torch.compiler.is_compiling():
        # torch.compile cannot trace torch's CPU LSTM at every input (its oneDNN layer op
        # fails when the input needs no gradient but the weights do); our op traces.
        return "fused"
    return "aten"


def choose_path(backend, data, unsupported, batch, hidden, steps=1, grad=False,
                streaming=False, packed=False):
    """'fused' (our op), 'reference' or 'aten' for this input under `backend`: `steps` long,
    `grad` whether a backward will follow, `streaming` whether it is a short call without
    gradient that ops.stack_inference runs, `packed` a PackedSequence's data (auto on the
    CPU weighs them all)."""
    if backend in ("cudnn", "aten"):
        return "aten"
    if backend == "reference":
        return "reference"
    if _onnx_exporting():
        # Exported as torch's own LSTM op, which the ONNX exporter writes as the standard
        # ONNX LSTM operator (any ONNX runtime runs it); the fastlstm ops have no ONNX form.
        return "aten"
    if backend == "triton":
        return _triton_path(data, unsupported)
    if backend == "auto":
        return _auto_path(data, unsupported, batch, hidden, steps, grad, streaming, packed)
    _extension.require(backend)
    if data.device.type != backend:
        raise ValueError(f'FastLSTM backend="{backend}" needs {backend} tensors, got input on '
                         f'{data.device}; move the module and input, or use backend="auto"')
    if backend == "cuda" and not _extension.cuda_compiled():
        raise RuntimeError('FastLSTM backend="cuda": fastlstm._C was built without CUDA '
                           "kernels; rebuild with a CUDA torch and nvcc (FASTLSTM_FORCE_CUDA=1)")
    return _to_torch_lstm(backend, unsupported) if unsupported else "fused"


def _to_torch_lstm(backend, unsupported):
    """An explicit backend asked for what it cannot do: say so, and use torch's LSTM."""
    warnings.warn(f'FastLSTM backend="{backend}" does not support {unsupported} yet; '
                  "using torch's own LSTM for it", stacklevel=4)
    return "aten"


def _triton_dtypes():
    from . import triton_ops
    cuda = (torch.float32, torch.float16, torch.bfloat16)
    return {"cuda": cuda, "cpu": (torch.float32,) if triton_ops.INTERPRET else ()}


def _triton_path(data, unsupported):
    """backend="triton": CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests)."""
    from . import triton_ops
    if not triton_ops.available():
        raise RuntimeError('FastLSTM backend="triton" needs the triton package')
    if not (data.is_cuda or (triton_ops.INTERPRET and data.device.type == "cpu")):
        raise ValueError('FastLSTM backend="triton" needs CUDA tensors (or, for tests on the '
                         'CPU, TRITON_INTERPRET=1 set before triton is imported)')
    if unsupported is None:
        unsupported = _fused_unsupported(data, dtypes_by_device=_triton_dtypes())
    return _to_torch_lstm("triton", unsupported) if unsupported else "triton"


def _triton_layer_op():
    from . import triton_ops  # noqa: F401  (registers fastlstm_triton::lstm_layer)
    return torch.ops.fastlstm_triton.lstm_layer


def _check_same_device_dtype(module, tensors, what):
    weight = module._parameters[module._weight_names[0]]
    for t in tensors:
        # (both on the CPU decided without building device objects: this runs every call)
        if not (t.is_cpu and weight.is_cpu) and t.device != weight.device:
            raise RuntimeError(f"{what} and parameter tensors are not at the same device, found "
                               f"{what} tensor at {t.device} and parameter tensor at "
                               f"{weight.device}")
        if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
            if what == "Input":  # nn.LSTM's own check, and message
                raise ValueError(f"RNN input dtype ({t.dtype}) does not match weight dtype "
                                 f"({weight.dtype}). Convert input: input.to({weight.dtype}), "
                                 f"or convert model: model.to({t.dtype})")
            raise RuntimeError(f"{what} and parameter tensors are not the same dtype, found "
                               f"{what.lower()} tensor with {t.dtype} and parameter tensor "
                               f"with {weight.dtype}")


def _check_lstm_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size):
    """nn.LSTM's constructor checks (torch.nn.RNNBase), in its order, with its exception
    types and messages, so code and tests that catch torch's errors see the same ones."""
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) \
            or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      f"non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        # torch does not check this, and fails later with a TypeError from range(): say it.
        raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


class _StreamingCalls:
    """What FastLSTM and FastLSTMCell share for their short calls without gradient, the calls
    a deployed model makes again and again: fastlstm._C.streaming_call checks and runs them
    in C++ (the stack op, as the module's Python route would), with a route kept on the
    module until one of its attributes is set; anything it does not take (errors included)
    goes the Python route."""

    def _streaming_call(self, input, hx):
        """(the forward's result) or None (not taken). Without gradient only."""
        if torch.compiler.is_compiling():
            return None
        route = self.__dict__.get("_streaming_route", False)
        if route is False:
            route = self.__dict__["_streaming_route"] = (
                self._streaming_route()
                if _extension.available() and self.backend in ("auto", "cpu") else None)
        if route is None or _onnx_exporting():
            return None
        return _extension._C.streaming_call(route, self._parameters, input, hx)

    def _route(self, names, max_steps, batch_first, cell):
        """streaming_call's route: the parameters' names (w_ih, w_hh, b_ih, b_hh tuples, one
        name a layer), the sizes, the input's layout, and the largest batch auto's rule takes
        at each number of steps up to max_steps, for float32 and for bfloat16 (a prefix of
        the batches, at most 256; backend "cpu": every batch)."""
        def largest_batch(dtype, steps):
            if self.backend == "cpu":
                return 1 << 62
            batch = 0
            while batch < 256 and _cpu_auto_fused(dtype, False, steps, batch + 1,
                                                  self.hidden_size, streaming=True):
                batch += 1
            return batch

        limits = tuple(tuple(largest_batch(dtype, steps) for steps in range(1, max_steps + 1))
                       for dtype in (torch.float32, torch.bfloat16))
        return (names, self.input_size, self.hidden_size, bool(batch_first), limits, cell)

    def __setattr__(self, name, value):
        self.__dict__.pop("_streaming_route", None)  # made again at the next call
        super().__setattr__(name, value)

    def __getstate__(self):
        # (auto's limits are this CPU's: made again where the module is loaded)
        return {k: v for k, v in super().__getstate__().items() if k != "_streaming_route"}


class FastLSTM(_StreamingCalls, nn.Module):
    """nn.LSTM with fused kernels. Same arguments, parameters and forward contract, plus
    keywords ``backend`` and ``dropout_masks``: "torch" (default) draws the between-layer
    dropout masks as nn.LSTM does (the same masks for the same seed); "counter" draws them
    with fastlstm's counter-based dropout (ops.dropout; CPU tensors, on our op's path and
    where auto picks torch's), ~18x faster on the CPU, other masks. Not a subclass of
    nn.LSTM: torch.compile refuses to trace those, while it traces this module (and the
    fastlstm ops) whole."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto", dropout_masks="torch"):
        super().__init__()
        _check_lstm_args(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         proj_size)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.backend = _check_backend(backend)
        if dropout_masks not in ("torch", "counter"):
            raise ValueError(f"dropout_masks must be 'torch' or 'counter', got {dropout_masks!r}")
        self.dropout_masks = dropout_masks

        # nn.LSTM's parameters, names and registration order (its state_dict order).
        factory = dict(device=device, dtype=dtype)
        dirs = 2 if bidirectional else 1
        out_size = proj_size or hidden_size
        self._weight_names = []
        for layer in range(num_layers):
            for suffix in ["", "_reverse"][:dirs]:
                layer_in = input_size if layer == 0 else out_size * dirs
                shapes = [("weight_ih", (4 * hidden_size, layer_in)),
                          ("weight_hh", (4 * hidden_size, out_size))]
                if bias:
                    shapes += [("bias_ih", (4 * hidden_size,)), ("bias_hh", (4 * hidden_size,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                for name, shape in shapes:
                    full = f"{name}_l{layer}{suffix}"
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    self._weight_names.append(full)
        self.reset_parameters()

    def flatten_parameters(self):
        """What nn.LSTM's does: on CUDA with cuDNN, move the weights into one buffer that
        cuDNN reads in place (else it copies them together on every call). A no-op
        elsewhere; the fused backends do not need it."""
        weights = self._weights()
        first = weights[0]
        if not all(w.is_cuda and w.dtype == first.dtype for w in weights) \
                or not torch.backends.cudnn.is_acceptable(first) \
                or len({w.data_ptr() for w in weights}) != len(weights) \
                or not torch._use_cudnn_rnn_flatten_weight():
            return
        from torch.backends.cudnn import rnn as cudnn_rnn
        weights_per_layer = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        with torch.cuda.device_of(first), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(weights, weights_per_layer, self.input_size,
                                            cudnn_rnn.get_cudnn_mode("LSTM"), self.hidden_size,
                                            self.proj_size, self.num_layers, self.batch_first,
                                            bool(self.bidirectional))

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self.flatten_parameters()  # after .cuda() / .to(), as nn.LSTM does
        return result

    def reset_parameters(self):
        """nn.LSTM's initialisation: every parameter U(-1/sqrt(hidden), 1/sqrt(hidden))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", backend={self.backend!r}"
        masks = getattr(self, "dropout_masks", "torch")  # absent in modules pickled before it
        return s + (f", dropout_masks={masks!r}" if masks != "torch" else "")

    def _weights(self):
        """Parameters in nn.LSTM's flat order (what torch's own LSTM kernels take)."""
        return [getattr(self, name) for name in self._weight_names]

    def _zero_state(self, batch, like):
        dirs = 2 if self.bidirectional else 1
        zeros = lambda n: like.new_zeros(self.num_layers * dirs, batch, n)  # noqa: E731
        return zeros(self.proj_size or self.hidden_size), zeros(self.hidden_size)

    def _check_state(self, hx, batch):
        dirs = 2 if self.bidirectional else 1
        for i, size in enumerate((self.proj_size or self.hidden_size, self.hidden_size)):
            expected = (self.num_layers * dirs, batch, size)
            if tuple(hx[i].shape) != expected:
                raise RuntimeError(f"Expected hidden[{i}] size {expected}, got "
                                   f"{list(hx[i].shape)}")

    def _validate(self, input, hx):
        """nn.LSTM's checks with its error types and messages, plus device and dtype checks
        of the states. Returns batched 3-D input (layout unchanged), 3-D states (zeros if
        none were given) and whether the input was unbatched."""
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
        _check_same_device_dtype(self, [x], "Input")
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {x.size(-1)}")
        batch = x.size(0 if self.batch_first else 1)
        if hx is None:
            return x, self._zero_state(batch, x), not batched
        want = 3 if batched else 2
        if hx[0].dim() != want or hx[1].dim() != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        if not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        _check_same_device_dtype(self, hx, "Hidden")
        self._check_state(hx, batch)
        return x, hx, not batched

    def forward_ids(self, ids, embedding, hx=None):
        """``self(embedding(ids), hx)``: the same result, for an nn.Embedding (or its weight
        [num_ids, input_size]) in front of this LSTM; ids [seq, batch] or [batch, seq] (as
        batch_first) of int64. Where a backward will follow on the CPU's fused path, the
        first layer reads its input projection from a table (embedding weight W_ih^T + b,
        one row per id, computed each call) instead of projecting every step's input, and
        its backward adds each row's gradient into its id's table row: no product over all
        steps for W_ih's and the embedding's gradients (they come from the table's). Where
        that does not apply (other paths, unbatched ids, more ids than tokens, an Embedding
        with padding_idx, max_norm, scale_grad_by_freq or sparse) it runs exactly
        ``self(embedding(ids), hx)``."""
        weight = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
        if not self._fold_fits(ids, embedding, weight):
            x = embedding(ids) if isinstance(embedding, nn.Embedding) else F.embedding(ids, weight)
            return self(x, hx)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= weight.size(0)):
            raise IndexError("index out of range in self")  # as F.embedding says it
        # weight's first row, expanded: stands in for the embedded input in the checks and the
        # routing (shape, dtype, device, requires_grad) without gathering it.
        x = weight[:1].expand(*ids.shape, weight.size(1))
        return self._forward(x, hx, (ids, weight))

    def _fold_fits(self, ids, embedding, weight):
        if isinstance(embedding, nn.Embedding) and (
                embedding.padding_idx is not None or embedding.max_norm is not None
                or embedding.scale_grad_by_freq or embedding.sparse):
            return False
        return (ids.dim() == 2 and ids.dtype == torch.int64 and weight.dim() == 2
                and ids.device.type == "cpu" and weight.device.type == "cpu"
                and weight.size(0) <= ids.numel() and _extension.available()
                and self._grad_wanted(weight))

    def forward(self, input, hx=None):
        if not torch.is_grad_enabled():
            out = self._streaming_call(input, hx)
            if out is not None:
                return out
        return self._forward(input, hx)

    def _streaming_route(self):
        """(_StreamingCalls) None where the stack op never runs this module's short calls."""
        if self.bidirectional or self.proj_size or self._drops_out_between_layers():
            return None
        names = tuple(tuple(column) for column in self._layer_param_names())
        return self._route(names, CPU_FUSED_MIN_STEPS - 1, self.batch_first, cell=False)

    def _forward(self, input, hx, embedded=None):
        """forward; `embedded` (ids, weight): input stands in for F.embedding(ids, weight)
        (forward_ids), which only the CPU training path's first layer does not gather."""
        if isinstance(input, PackedSequence):
            unsupported = _fused_unsupported(input.data, self.proj_size, packed=True)
            if self.backend == "triton":
                unsupported = unsupported or "PackedSequence input"
            path = choose_path(self.backend, input.data, unsupported,
                               int(input.batch_sizes[0]), self.hidden_size,
                               len(input.batch_sizes), self._grad_wanted(input.data),
                               packed=True)
            return self._forward_packed(input, hx, path)
        x, state, unbatched = self._validate(input, hx)
        steps, batch = (x.size(1), x.size(0)) if self.batch_first else (x.size(0), x.size(1))
        grad = self._grad_wanted(x)
        dtype = compute_dtype(x)
        # (the stack op has no backward: not where a given state wants a gradient either)
        streaming = (not grad and not ops._grad_wanted(*state)
                     and self._stack_inference_fits(x, steps, dtype))
        path = choose_path(self.backend, x, _fused_unsupported(x, self.proj_size), batch,
                           self.hidden_size, steps, grad, streaming)
        persistent = path != "triton" and x.is_cuda and ops.persistent_enabled()
        if embedded is not None and (path != "fused" or streaming or persistent or not grad
                                     or not ops._train_op_enabled()):
            x = F.embedding(*embedded)  # a path that reads the input itself
            embedded = None
        if path == "reference":
            out, (h_n, c_n) = reference_lstm(
                x, state, dict(self.named_parameters()), num_layers=self.num_layers,
                bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                training=self.training, bidirectional=self.bidirectional,
                proj_size=self.proj_size)
        elif path == "aten":
            out, h_n, c_n = self._forward_torch(x, state)
        elif path == "fused" and streaming:
            out, h_n, c_n = self._forward_stack_inference(x, state, dtype)
        else:
            stack = (persistent and ops.persistent_version() == 4
                     and self._stack_fits_one_launch())
            layer_op = (_triton_layer_op() if path == "triton"
                        else torch.ops.fastlstm.lstm_layer_persistent if persistent else None)
            out, h_n, c_n = self._forward_fused(x, state, layer_op, stack=stack,
                                                embedded=embedded)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, (h_n, c_n)

    def _grad_wanted(self, x):
        """Whether a backward can follow this forward (auto's CPU rule differs for training)."""
        return torch.is_grad_enabled() and (x.requires_grad or
                                            any(p.requires_grad for p in self.parameters()))

    @torch.no_grad()
    def inspect(self, input, hx=None):
        """The documented inspection hook: run `input` one time step at a time through this
        module's own forward (the step path) and return, besides forward's usual
        (output, (h_n, c_n)), every layer's state after every step:
          states["h"]: [seq, num_layers, batch, proj_size or hidden_size]
          states["c"]: [seq, num_layers, batch, hidden_size]   (the cell state c, not tanh(c))
        Batched 3-D input, any batch_first. Unidirectional only: a backward direction needs
        the whole sequence before its first state exists."""
        if self.bidirectional:
            raise ValueError("inspect() steps forward in time; a bidirectional LSTM's backward "
                             "direction has no per-step state in that order")
        if input.dim() != 3:
            raise ValueError(f"inspect() takes batched 3-D input, got {input.dim()}D")
        time_dim = 1 if self.batch_first else 0
        outputs, hs, cs = [], [], []
        state = hx
        for x_t in input.split(1, dim=time_dim):
            out, state = self(x_t, state)
            outputs.append(out)
            hs.append(state[0])
            cs.append(state[1])
        return (torch.cat(outputs, dim=time_dim), state,
                {"h": torch.stack(hs), "c": torch.stack(cs)})

    def _forward_packed(self, input, hx, path):
        if path == "reference":
            return reference_lstm(input, hx, dict(self.named_parameters()),
                                  num_layers=self.num_layers, bias=self.bias,
                                  dropout=self.dropout, training=self.training,
                                  bidirectional=self.bidirectional, proj_size=self.proj_size)
        data, batch_sizes, sorted_idx, unsorted_idx = input
        batch = int(batch_sizes[0])
        if path == "fused":  # (torch's LSTM checks these itself)
            _check_same_device_dtype(self, [data], "Input")
            if data.dim() != 2 or data.size(-1) != self.input_size:
                raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                                   f"{self.input_size}, got {data.size(-1)}")
        if hx is None:
            hx = self._zero_state(batch, data)
        else:
            _check_same_device_dtype(self, hx, "Hidden")
            self._check_state(hx, batch)
            if sorted_idx is not None:  # states come in the caller's batch order
                hx = tuple(t.index_select(1, sorted_idx) for t in hx)
        if path == "fused":
            out, h_n, c_n = self._forward_fused_packed(data, batch_sizes, hx)
        else:
            out, h_n, c_n = torch._VF.lstm(data, batch_sizes, hx, self._weights(), self.bias,
                                           self.num_layers, self.dropout, self.training,
                                           self.bidirectional)
        if unsorted_idx is not None:
            h_n, c_n = h_n.index_select(1, unsorted_idx), c_n.index_select(1, unsorted_idx)
        return PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx), (h_n, c_n)

    def _forward_fused_packed(self, data, batch_sizes, state):
        """Through ops.lstm_layer_packed: data [N, F] a PackedSequence's data, state (h0, c0)
        in its sorted order -> (out data, h_n, c_n). Both directions write in the data's own
        layout, so _layer_loop's side by side output and dropout over the packed data are
        what torch's LSTM computes (and its dropout masks)."""
        dtype = compute_dtype(data)  # under autocast, everything runs in its dtype
        h0, c0 = (t.to(dtype) for t in state)

        def layer_fn(layer, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse):
            return ops.lstm_layer_packed(x, batch_sizes, h, c, *(
                _cast(p, dtype) for p in (w_ih, w_hh, b_ih, b_hh)), reverse=reverse)
        return self._layer_loop(data.to(dtype), h0, c0, layer_fn)

    def _stack_inference_fits(self, x, steps, dtype):
        """Whether ops.stack_inference (every layer of each step in one call, packed weights
        kept across calls) runs this call without gradient: CPU tensors, one direction, no
        projection, a dtype the fused layer runs here, and a short sequence (under the fused
        layer's minimum: longer ones run layer by layer, each layer's weights staying in
        cache for all its steps; benchmarks/NOTES.md, "Streaming"). Not in training mode with
        dropout between layers: nn.LSTM drops out there without gradient too."""
        return (steps < CPU_FUSED_MIN_STEPS and not self.bidirectional and not x.is_cuda
                and self.proj_size == 0 and _extension.cpu_fused(dtype)
                and not self._drops_out_between_layers())

    def _drops_out_between_layers(self):
        """Whether a forward applies dropout between the layers, as nn.LSTM's does in training
        mode, with or without gradient."""
        return self.training and self.dropout > 0 and self.num_layers > 1

    def _forward_stack_inference(self, x, state, dtype):
        params = self._layer_params()
        out, h_n, c_n = ops.stack_inference(x.transpose(0, 1) if self.batch_first else x,
                                            *state, *params, dtype)
        return (out.transpose(0, 1) if self.batch_first else out), h_n, c_n

    def _layer_params(self):
        """(w_ih, w_hh, b_ih, b_hh) lists, one entry per layer (a unidirectional stack); the
        bias lists empty without bias."""
        params = self._parameters
        return [[params[name] for name in column] for column in self._layer_param_names()]

    def _layer_param_names(self):
        """The names of _layer_params' parameters, in its lists."""
        per = len(self._weight_names) // self.num_layers
        names = [self._weight_names[k::per] for k in range(4 if self.bias else 2)]
        return names if self.bias else names + [[], []]

    def _stack_fits_one_launch(self):
        """Whether the persistent stack op (p4) can run this module: one direction, no
        dropout between layers in training, at most 8 layers."""
        return (not self.bidirectional and not (self.dropout > 0 and self.training)
                and self.num_layers <= 8)

    def _forward_torch(self, x, state):
        """torch's own LSTM. Where auto chose it, with dropout_masks="counter" in training on
        CPU tensors: layer by layer, fastlstm's counter dropout between the layers (the same
        masks as on our op's path, and ~18x cheaper than the ones torch's kernel draws).
        backend="aten" / "cudnn" stay torch's LSTM as it is, dropout included."""
        if not (self.backend == "auto" and self.dropout > 0 and self.training
                and self.num_layers > 1 and not x.is_cuda
                and getattr(self, "dropout_masks", "torch") == "counter"):
            return torch._VF.lstm(x, state, self._weights(), self.bias, self.num_layers,
                                  self.dropout, self.training, self.bidirectional,
                                  self.batch_first)
        weights = self._weights()
        dirs = 2 if self.bidirectional else 1
        per_layer = len(weights) // self.num_layers
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            rows = slice(layer * dirs, (layer + 1) * dirs)
            x, h, c = torch._VF.lstm(x, (state[0][rows], state[1][rows]),
                                     weights[layer * per_layer:(layer + 1) * per_layer],
                                     self.bias, 1, 0.0, True, self.bidirectional,
                                     self.batch_first)
            h_n.append(h)
            c_n.append(c)
            if layer < self.num_layers - 1:
                x = self._between_layers(x, self.batch_first)
        return x, torch.cat(h_n), torch.cat(c_n)

    def _between_layers(self, x, batch_first):
        """The dropout between two layers in training: fastlstm's counter masks, drawn over
        the time-major elements whatever x's layout (so every path draws the same masks),
        or torch's (dropout_masks="torch")."""
        if getattr(self, "dropout_masks", "torch") != "counter":
            return F.dropout(x, self.dropout, training=True)
        if batch_first:
            return ops.dropout(x.transpose(0, 1), self.dropout).transpose(0, 1)
        return ops.dropout(x, self.dropout)

    def _forward_fused(self, x, state, layer_op=None, stack=False, embedded=None):
        """Layer by layer, direction by direction, through the fastlstm ops, or with
        `stack` (see _stack_fits_one_launch) every layer in one persistent launch. x is
        batched 3-D in the module's layout; returns (output, h_n, c_n) in the same layout.
        embedded (ids, weight): the first layer reads its input projection from a table
        per id (ops.lstm_layer_embedded; x then only stands in for the embedded input)."""
        dtype = compute_dtype(x)  # under autocast, everything runs in its dtype
        h0, c0 = (t.to(dtype) for t in state)
        layer_in = None if embedded is not None else (  # ops: time-major
            x.transpose(0, 1) if self.batch_first else x).to(dtype)
        if stack:
            params = lambda name: [  # noqa: E731
                getattr(self, f"{name}_l{layer}").to(dtype) if self.bias or "weight" in name
                else None for layer in range(self.num_layers)]
            out, h_n, c_n = ops.lstm_stack(layer_in, h0, c0, params("weight_ih"),
                                           params("weight_hh"), params("bias_ih"),
                                           params("bias_hh"))
            return (out.transpose(0, 1) if self.batch_first else out), h_n, c_n

        def layer_fn(layer, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse):
            if embedded is not None and layer == 0:
                ids, weight = embedded
                table = F.linear(_cast(weight, dtype), _cast(w_ih, dtype),
                                 None if b_ih is None else _cast(b_ih + b_hh, dtype))
                return ops.lstm_layer_embedded(ids.t() if self.batch_first else ids, table, h,
                                               c, _cast(w_hh, dtype), reverse=reverse)
            return ops.lstm_layer(x, h, c, *(_cast(p, dtype) for p in (w_ih, w_hh, b_ih, b_hh)),
                                  reverse=reverse, layer_op=layer_op)
        out, h_n, c_n = self._layer_loop(layer_in, h0, c0, layer_fn)
        return (out.transpose(0, 1) if self.batch_first else out), h_n, c_n

    def _layer_loop(self, layer_in, h0, c0, layer_fn):
        """Layer by layer, direction by direction: layer_fn(layer, layer_in, h0[k], c0[k],
        w_ih, w_hh, b_ih, b_hh, reverse) -> (hs, h_n, c_n) with the direction's parameters
        as they are (b_* None without bias), k = layer * directions + direction. The
        directions' outputs side by side along the last dim are the next layer's input, with
        the dropout between layers in training; layer_in time-major [S, B, F] or packed data
        [N, F] alike. Returns (the last layer's output, h_n, c_n stacked)."""
        dirs = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(["", "_reverse"][:dirs]):
                k = layer * dirs + d
                w = lambda name: getattr(self, f"{name}_l{layer}{suffix}")  # noqa: E731
                b_ih, b_hh = (w("bias_ih"), w("bias_hh")) if self.bias else (None, None)
                hs, h, c = layer_fn(layer, layer_in, h0[k], c0[k], w("weight_ih"),
                                    w("weight_hh"), b_ih, b_hh, d == 1)
                outs.append(hs)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = self._between_layers(layer_in, batch_first=False)
        return layer_in, torch.stack(h_n), torch.stack(c_n)


class FastLSTMCell(_StreamingCalls, nn.LSTMCell):
    """nn.LSTMCell on the fused step op. Same arguments, plus keyword ``backend``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def _check_cell_args(self, x, hx):
        """What torch's lstm_cell checks of batched 2-D x and (h, c), as RuntimeErrors with
        its messages; and the device and dtype of each against the weights."""
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected "
                               f"{self.input_size}")
        for k, t in enumerate(hx):
            if t.dim() != 2:
                raise RuntimeError(f"LSTMCell: hx[{k}] must have as many dimensions as the "
                                   f"input (1D unbatched, 2D batched)")
            if t.size(0) != x.size(0):
                raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{k} batch "
                                   f"size {t.size(0)}")
            if t.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {t.size(1)}, "
                                   f"expected {self.hidden_size}")
        weight = self._parameters["weight_ih"]
        for what, t in (("input", x), ("hx", hx[0]), ("cx", hx[1])):
            if not (t.is_cpu and weight.is_cpu) and t.device != weight.device:
                raise RuntimeError(f"LSTMCell: {what} is on {t.device} but the weights are on "
                                   f"{weight.device}")
            if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
                raise RuntimeError(f"LSTMCell: {what} and weights must have the same dtype, but "
                                   f"got {t.dtype} and {weight.dtype}")

    def _streaming_route(self):
        """(_StreamingCalls) a cell: one layer, one step."""
        names = (("weight_ih",), ("weight_hh",)) + ((("bias_ih",), ("bias_hh",)) if self.bias
                                                   else ((), ()))
        return self._route(names, 1, False, cell=True)

    def forward(self, input, hx=None):
        if not torch.is_grad_enabled():
            out = self._streaming_call(input, hx)
            if out is not None:
                return out
        # nn.LSTMCell's checks, in its order, with its exception types and messages.
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        p = self._parameters
        weights = (p["weight_ih"], p["weight_hh"],
                   *((p["bias_ih"], p["bias_hh"]) if self.bias else (None, None)))
        # Without gradient on the CPU: a stack of one layer and one step (ops.stack_inference).
        streaming = (not input.is_cuda and _extension.cpu_fused(compute_dtype(input))
                     and not ops._grad_wanted(input, *(hx or ()), *weights))
        path = choose_path(self.backend, input, _fused_unsupported(input),
                           input.size(0) if input.dim() == 2 else 1, self.hidden_size,
                           streaming=streaming)
        if path == "aten":
            return super().forward(input, hx)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            h = c = x.new_zeros(x.size(0), self.hidden_size)
        else:
            h, c = (t.unsqueeze(0) for t in hx) if unbatched else hx
        self._check_cell_args(x, (h, c))
        dtype = compute_dtype(x)  # under autocast, everything runs in its dtype
        if path == "fused" and streaming:
            # Its packed weights kept across calls, the step's products and gate math fused.
            _, h, c = ops.stack_inference(
                x.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0), [weights[0]], [weights[1]],
                *([[weights[2]], [weights[3]]] if self.bias else [[], []]), dtype)
            h, c = h.squeeze(0), c.squeeze(0)
        else:
            args = (x.to(dtype), h.to(dtype), c.to(dtype),
                    *(None if w is None else w.to(dtype) for w in weights))
            if path == "triton":  # a layer of one step
                _, h, c = ops.lstm_layer(args[0].unsqueeze(0), *args[1:],
                                         layer_op=_triton_layer_op())
            else:
                h, c = (lstm_cell_reference if path == "reference" else ops.lstm_step)(*args)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


# torch.load's default (weights_only=True) unpickles only allowed classes: allow ours, so a
# whole saved module (torch.save(model)) holding them loads as one holding nn.LSTM would.
torch.serialization.add_safe_globals([FastLSTM, FastLSTMCell])
