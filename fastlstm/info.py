"""`python -m fastlstm.info`: what this installation can run, and what auto picks."""
from __future__ import annotations

import argparse
import os

import torch

from . import _extension, module, ops


def report() -> list[tuple[str, str]]:
    ext = _extension._C
    rows = [("torch running", torch.__version__),
            ("torch built against", ext.built_with_torch if ext else "-"),
            ("C++ CPU op (backend='cpu')",
             "available" if ext else f"UNAVAILABLE: {_extension.load_error}")]
    if ext is not None and ext.cuda_compiled:
        archs = ", ".join(f"sm_{int(a) // 10}" for a in ext.cuda_archs.split(",") if a.isdigit())
        graphs = "on" if ext.cuda_graphs_enabled() else "off"
        persistent = (f"on, version {ops.persistent_version()}" if ops.persistent_enabled()
                      else "off (opt-in: p1 correct on a GPU, not yet faster; p4 not yet "
                      "run on a GPU)")
        rows.append(("CUDA kernels (backend='cuda')",
                     f"compiled for {archs}; CUDA graphs {graphs}; persistent forward "
                     f"{persistent}"))
    else:
        rows.append(("CUDA kernels (backend='cuda')", "not compiled"))
    try:
        import triton
        from . import triton_ops
        where = ("CPU tensors, in the interpreter (TRITON_INTERPRET=1)" if triton_ops.INTERPRET
                 else "CUDA tensors")
        rows.append(("Triton (backend='triton')", f"{triton.__version__}: on {where}; "
                     "correct on a GPU, not yet fast (benchmarks/NOTES.md)"))
    except ImportError:
        rows.append(("Triton", "not installed"))
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("GPU visible", "; ".join(gpus)))
    else:
        rows.append(("GPU visible", "none"))
    if ext:
        fused = (ext.cpu_fused_dtypes.replace(",", ", ")
                 or "none (needs x86-64 with AVX-512, or AVX2 + FMA for float32)")
        rows.append(("C++ CPU op's fused layer", f"{fused}; "
                     f"{'on' if os.environ.get('FASTLSTM_CPU_FUSED') != '0' else 'OFF'} "
                     "(FASTLSTM_CPU_FUSED=0: the per-step loop)"))
        if _extension.cpu_fused(torch.float32):
            avx2 = (os.environ.get("FASTLSTM_CPU_ISA") == "avx2"
                    or _extension.cpu_class() not in ("amx", "avx512_bf16", "avx512"))
            rows.append(("its float32 kernels", "the AVX2 + FMA build" if avx2 else
                         "the AVX-512 build (FASTLSTM_CPU_ISA=avx2: the AVX2 + FMA build)"))
        if ext.cpu_amx():
            amx_on = os.environ.get("FASTLSTM_CPU_AMX") != "0"
            rows.append(("its bf16 products", f"on AMX tiles{'' if amx_on else ': OFF'} "
                         "(FASTLSTM_CPU_AMX=0: the AVX-512 register tile)"))
        cls = _extension.cpu_class()
        rule = module.CPU_RULES.get(cls)
        rows.append(("auto on CPU tensors",
                     f"CPU class '{cls}': " + (" ".join(rule.__doc__.split()) if rule else
                     "not measured, so torch's own LSTM (measured classes: "
                     + ", ".join(module.CPU_RULES) + ")")))
        streaming_rule = module.STREAMING_RULES.get(cls)
        if streaming_rule:
            rows.append(("auto on short calls without gradient",
                         " ".join(streaming_rule.__doc__.split())))
    else:
        rows.append(("auto on CPU tensors", "torch's own LSTM (extension unavailable)"))
    rows.append(("char-rnn generation (model.generate)",
                 ("CPU: the fused op (fastlstm.ops.generate), 64 characters a call, in "
                  + ("bf16 (precision='auto'; 'fp32' on request)"
                     if _extension.cpu_generate(torch.bfloat16) else "fp32")
                  if _extension.cpu_generate(torch.float32)
                  else "CPU: one step at a time (the fused op needs x86-64 with AVX-512)")
                 + "; CUDA: one step at a time (no CUDA generation op yet)"))
    rows.append(("auto on CUDA tensors",
                 f"CUDA op for bf16 at hidden <= {module.CUDA_FUSED_MAX_HIDDEN}, else cuDNN "
                 "(benchmarks/NOTES.md)"))
    if _extension.available():
        packed_rule = module.PACKED_RULES.get(_extension.cpu_class())
        rows.append(("auto on PackedSequence input",
                     "the fused CPU layer (" + " ".join(packed_rule.__doc__.split()) + ")"
                     if packed_rule and _extension.cpu_fused(torch.float32)
                     else "torch's own LSTM (this class of CPU not measured)"))
    rows.append(("always torch's own LSTM", "proj_size > 0; PackedSequence input on CUDA "
                 "tensors, in float64, or where the fused CPU layer does not run"))
    return rows


def main(argv=None) -> None:
    argparse.ArgumentParser(
        prog="python -m fastlstm.info",
        description="Prints what this installation of fastlstm can run: the torch it runs "
        "with and was built against, which kernels (C++ CPU, CUDA, Triton) are available, "
        "the CPU's fused dtypes, the GPUs visible, and what backend='auto' picks on CPU and "
        "CUDA tensors. Takes no arguments.").parse_args(argv)
    rows = report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
