"""Build fastlstm._C: the CPU op always, the CUDA kernels when they can be compiled.

Environment:
  FASTLSTM_FORCE_CUDA=1   compile the CUDA sources even with no GPU visible (CI does this)
  FASTLSTM_SKIP_CUDA=1    never compile them
  TORCH_CUDA_ARCH_LIST    GPU architectures (default with no GPU visible: 7.5;8.0;8.6;8.9;9.0+PTX)
  MAX_JOBS                parallel compile jobs
  CUDA_HOME               the CUDA toolkit (default: /usr/local/cuda, else found from nvcc)
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The toolkit root. `which nvcc` may be a wrapper script in /usr/local/bin, whose
    parent is not the toolkit, so each candidate must hold include/cuda_runtime_api.h."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")) and \
                os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def pip_cuda_includes():
    """Headers from NVIDIA's pip wheels (nvidia/*/include), for a toolkit without cuBLAS etc."""
    dirs = []
    for site in sys.path:
        dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def want_cuda(torch, cuda_home):
    if flag("FASTLSTM_SKIP_CUDA"):
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if flag("FASTLSTM_FORCE_CUDA") and reasons:
        sys.exit("FASTLSTM_FORCE_CUDA=1 but " + "; ".join(reasons))
    if reasons:
        print("fastlstm: building without CUDA kernels: " + "; ".join(reasons))
    return not reasons


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home:  # torch.utils.cpp_extension reads CUDA_HOME when imported
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils import cpp_extension

    with_cuda = want_cuda(torch, cuda_home)
    sources = ["csrc/torch/ops.cpp", "csrc/torch/layer.cpp", "csrc/torch/layer_cpu_fused.cpp",
               "csrc/core/lstm_cpu_fused_avx2.cpp",
               "csrc/torch/stack.cpp", "csrc/torch/generate_cpu.cpp",
               "csrc/torch/streaming_call.cpp", "csrc/torch/weight_cache.cpp",
               "csrc/torch/weight_gradients_cpu.cpp"]
    # No -std: torch's cpp_extension picks the standard its headers need (C++17 or C++20).
    # -fno-trapping-math lets GCC vectorise the gate math (see core/lstm_step.h).
    # -fopenmp: at::parallel_for is inline in torch's headers and splits work across threads
    # only where the including file is compiled with OpenMP (else it runs the whole range on
    # the calling thread). The libgomp.so.1 it links against is the one torch has loaded.
    cxx = ["-O3", "-fno-trapping-math", "-fopenmp",
           f'-DFASTLSTM_TORCH_VERSION="{torch.__version__}"']
    link = ["-fopenmp"]
    if not with_cuda:
        return [cpp_extension.CppExtension("fastlstm._C", sources, extra_compile_args={"cxx": cxx},
                                           extra_link_args=link)]

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    print(f"fastlstm: building CUDA kernels with {cuda_home}, "
          f"archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}")
    if not os.path.isfile(os.path.join(cuda_home, "include", "cublas_v2.h")):
        # Searched after the toolkit's own headers, which must win where both have a file.
        cxx += [arg for d in pip_cuda_includes() for arg in ("-idirafter", d)]
    sources += ["csrc/torch/ops_cuda.cpp", "csrc/torch/cuda_graphs.cpp",
                "csrc/torch/generate_cuda.cpp", "csrc/core/lstm_step_cuda.cu",
                "csrc/core/lstm_persistent_cuda.cu", "csrc/core/generate_cuda.cu"]
    return [cpp_extension.CUDAExtension(
        "fastlstm._C", sources,
        extra_compile_args={"cxx": cxx + ["-DFASTLSTM_WITH_CUDA"],
                            "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link)]


def main():
    ext_modules = extensions()  # first: it sets CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension
    setup(ext_modules=ext_modules,
          cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})


if __name__ == "__main__":
    main()
