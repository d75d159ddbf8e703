"""`python -m fastlstm.sample`: the char-rnn app's entry point (fastlstm/charrnn/sample.py)."""
import sys

from .charrnn.cli import run
from .charrnn.sample import main

if __name__ == "__main__":
    sys.exit(run(main))
