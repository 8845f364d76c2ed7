"""The command line: argparse built from the config dataclasses; one module per command group."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
