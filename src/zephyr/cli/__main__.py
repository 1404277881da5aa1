"""`python -m zephyr.cli ...` (what torchrun, accelerate launch and the pipeline start)."""

import sys

from zephyr.cli import main

if __name__ == "__main__":
    sys.exit(main())
