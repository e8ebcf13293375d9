"""`python -m tfgen ...`: the same as the `tfgen` command."""
import sys

from tfgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
