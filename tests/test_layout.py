"""The two rooms: the library (fastlstm: FastLSTM, the ops, the oracle, the Triton kernels,
extension loading, info) never imports the char-rnn app (fastlstm.charrnn and its entry
modules), and the app's documented commands still start."""
import subprocess
import sys

import pytest

APP_ENTRY_MODULES = ("fastlstm.train", "fastlstm.sample", "fastlstm.eval", "fastlstm.visualize")

LIBRARY_USE = """
import sys, torch, fastlstm
from fastlstm import FastLSTM, FastLSTMCell, ops, reference_lstm, info
lstm = FastLSTM(5, 8, 2)
out, (h, c) = lstm(torch.randn(4, 3, 5, requires_grad=True))
(out.sum() + c.sum()).backward()
FastLSTMCell(5, 8)(torch.randn(3, 5))
info.report()
app = sorted(name for name in sys.modules
             if name.startswith("fastlstm.charrnn") or name in {entries})
print("app modules loaded:", app)
"""


def test_library_never_imports_the_app():
    code = LIBRARY_USE.format(entries=set(APP_ENTRY_MODULES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "app modules loaded: []" in out.stdout, out.stdout


@pytest.mark.parametrize("module", APP_ENTRY_MODULES + ("fastlstm.info",))
def test_entry_modules_print_their_help(module):
    """--help is a usage text (fastlstm.info printed its table instead)."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module}"), out.stdout[:200]
