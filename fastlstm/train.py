"""`python -m fastlstm.train`: the char-rnn app's entry point (fastlstm/charrnn/train.py)."""
import sys

from .charrnn.cli import run
from .charrnn.train import main

if __name__ == "__main__":
    sys.exit(run(main))
