"""`python -m fastlstm.eval`: the char-rnn app's entry point (fastlstm/charrnn/eval.py)."""
import sys

from .charrnn.cli import run
from .charrnn.eval import main

if __name__ == "__main__":
    sys.exit(run(main))
