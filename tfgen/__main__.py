"""`python -m tfgen ...`: the same as the `tfgen` command."""
from tfgen.cli import console

if __name__ == "__main__":
    console()
