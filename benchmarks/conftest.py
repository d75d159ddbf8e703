import pytest
import torch


# cuda_persistent (p1) is left out by default: run 7 measured it slower than cuda everywhere
# but S3 fwd+bwd and the step (benchmarks/NOTES.md); name it to run it.
CUDA_BACKENDS = "cuda,cuda_eager,cuda_persistent4,triton,cudnn"


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="device to benchmark on (default: cuda if visible, else cpu)")
    parser.addoption("--bench-shapes", default=None,
                     help="comma-separated shapes (S1,S2,S3,step,charrnn,B8); default: "
                          "S1,S2,S3,step on cuda, S3,step,charrnn,B8 on cpu")
    parser.addoption("--bench-backends", default=None,
                     help="comma-separated FastLSTM backends (cuda_eager: cuda without CUDA "
                          "graphs; cuda_persistent, cuda_persistent4: the persistent forward, "
                          "p1 and p4); "
                          "default: " + CUDA_BACKENDS +
                          " on cuda, "
                          "cpu,auto,aten on cpu")
    parser.addoption("--bench-tf32", default="default", choices=("default", "on", "off"),
                     help="TF32 for fp32: 'default' leaves torch's flags (matmul off, cuDNN on), "
                          "'on'/'off' sets torch.backends.cuda.matmul.allow_tf32 and "
                          "torch.backends.cudnn.allow_tf32 both (p4 uses TF32 only where the "
                          "matmul flag is on)")
    parser.addoption("--bench-dtypes", default=None,
                     help="comma-separated dtypes (fp32,bf16,fp16); default: fp32,bf16 (on "
                          "the CPU bf16 is autocast over an fp32 module)")


def _option(config, name, cuda_default, cpu_default):
    value = config.getoption(name)
    if value is None:
        value = cuda_default if config.getoption("--bench-device") == "cuda" else cpu_default
    return value.split(",")


def pytest_generate_tests(metafunc):
    c = metafunc.config
    if "shape" in metafunc.fixturenames:
        metafunc.parametrize("shape", _option(c, "--bench-shapes", "S1,S2,S3,step",
                                                          "S3,step,charrnn,B8"))
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _option(c, "--bench-backends", CUDA_BACKENDS,
                                                "cpu,auto,aten"))
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", _option(c, "--bench-dtypes", "fp32,bf16", "fp32,bf16"))


@pytest.fixture
def device(request):
    return request.config.getoption("--bench-device")


@pytest.fixture(autouse=True)
def tf32(request):
    """The TF32 flags for the run (--bench-tf32); yields them for the benchmark's record."""
    choice = request.config.getoption("--bench-tf32")
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if choice != "default":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = choice == "on"
    yield {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
