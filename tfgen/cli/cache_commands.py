"""`tfgen cache info` / `tfgen cache clear`: what tfgen keeps on disk, and removing it.

Examples:
    tfgen cache info
    tfgen cache clear            # traced and compiled programs
    tfgen cache clear --all      # also converted GGUF weights and assembled packaged models
    TFGEN_CACHE=off tfgen generate "Hello"   # neither read nor write the cache
"""
from __future__ import annotations

import argparse

from tfgen.cli.options import print_json


def info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def clear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="also remove converted GGUF weights and assembled packaged models")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def info(args: argparse.Namespace) -> int:
    """Print the root, the size bound and what each section holds."""
    from tfgen import cache

    summary = cache.info()
    if args.json:
        print_json(summary)
        return 0
    if not summary["enabled"]:
        print("tfgen's cache is off (TFGEN_CACHE=off): nothing is read or written")
        return 0
    print(f"root: {summary['root']}")
    print(f"size bound (TFGEN_CACHE_MAX_BYTES): {_size(summary['max_bytes'])}")
    for name, section in summary["sections"].items():
        entries = f"{section['entries']} {'entry' if section['entries'] == 1 else 'entries'}"
        print(f"{name}: {entries}, {_size(section['bytes'])} "
              "(traced decoding programs with their XLA executables)")
    print(f"other files: {_size(summary['other_bytes'])} (converted GGUF weights, packaged models; "
          "not bounded)")
    return 0


def clear(args: argparse.Namespace) -> int:
    """Remove the entries (with --all, everything but running processes' XLA directories)."""
    from tfgen import cache

    if not cache.enabled():
        message = "tfgen's cache is off (TFGEN_CACHE=off): nothing to clear"
        print_json({"freed_bytes": 0, "enabled": False}) if args.json else print(message)
        return 0
    freed = cache.clear(everything=args.all)
    if args.json:
        print_json({"freed_bytes": freed, "root": cache.root(), "all": args.all})
    else:
        print(f"freed {_size(freed)} in {cache.root()}")
    return 0


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"
