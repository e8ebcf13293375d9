"""`python -m tfgen ...`: the same as the `tfgen` command."""
import sys

from tfgen.cli import main

sys.exit(main())
