"""fastlstm: fused LSTM kernels behind a drop-in FastLSTM, and a char-rnn on top."""
from . import _extension, ops  # noqa: F401  (ops registers fake impls and autograd)
from .module import BACKENDS, FastLSTM, FastLSTMCell
from .ops import cuda_graphs_enabled, persistent_enabled, set_cuda_graphs, set_persistent
from .reference import lstm_cell_reference, reference_lstm

__all__ = ["BACKENDS", "FastLSTM", "FastLSTMCell", "cuda_graphs_enabled", "lstm_cell_reference",
           "persistent_enabled", "reference_lstm", "set_cuda_graphs", "set_persistent"]
__version__ = "0.1.0"
