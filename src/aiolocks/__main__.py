"""``python -m aiolocks [asyncio|trio]``: the 60-second tour (the code is in ``_demo.py``)."""

import sys

from ._demo import run

if __name__ == "__main__":
    sys.exit(run())
