"""`python -m fastlstm.visualize`: the char-rnn app's entry point
(fastlstm/charrnn/visualize.py)."""
import sys

from .charrnn.cli import run
from .charrnn.visualize import main

if __name__ == "__main__":
    sys.exit(run(main))
