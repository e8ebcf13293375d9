"""The `tfgen` command line (`tfgen ...`, `python -m tfgen ...`).

`app` holds the command table, the parser, `main` and `console` (the program: `main`, then a
quick exit); `options` what the commands share; one module per command (`generate`,
`inspecting`, `serving`, `benchmark`, `batch`) its arguments and its run function. Importing
this package imports no TensorFlow.
"""
from tfgen.cli.app import COMMANDS, Command, build_parser, console, main

__all__ = ["COMMANDS", "Command", "build_parser", "console", "main"]
