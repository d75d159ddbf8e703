import os

# Before fastlstm._C loads: its ops then fill their outputs with NaN before the kernels
# run, so an element a kernel fails to write makes the comparison fail.
os.environ.setdefault("FASTLSTM_POISON_OUTPUTS", "1")
# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it must be
# chosen before triton is first imported.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    """fp32 means fp32 in these tests: no TF32 in cuBLAS or cuDNN."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the test on 1 and on 2 threads (the CPU ops split their work by the count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.fixture(params=["amx", "noamx", "avx2"])
def kernels(request, monkeypatch):
    """Which build of the fused CPU layer (csrc/core/lstm_cpu_fused.h) a test runs: bf16 on
    AMX tiles ("amx", where the CPU has them; elsewhere the register tile) or on the AVX-512
    register tile ("noamx", FASTLSTM_CPU_AMX=0); fp32 on AVX-512 ("amx") or on the AVX2 + FMA
    build ("avx2", FASTLSTM_CPU_ISA=avx2). Pairs that repeat another case or do not exist
    skip (helpers.skip_absent_kernels)."""
    if request.param == "avx2":
        monkeypatch.setenv("FASTLSTM_CPU_ISA", "avx2")
    else:
        monkeypatch.setenv("FASTLSTM_CPU_AMX", "1" if request.param == "amx" else "0")
    return request.param


def pytest_terminal_summary(terminalreporter):
    """A skipped real-browser test must not go unnoticed."""
    for report in terminalreporter.stats.get("skipped", []):
        if "test_page_in_a_real_browser" in report.nodeid:
            terminalreporter.write_line(
                "WARNING: the visualizer's real-browser test was SKIPPED: Chromium is not "
                "installed (.ci/run installs Debian's chromium)", red=True, bold=True)
