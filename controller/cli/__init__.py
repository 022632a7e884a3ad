"""The `nas` command line: flags derived from the SearchSpec, `search`, `inspect`, `bench`,
`train`, `export`, and the service's `serve` and client commands."""

from raynas.controller.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
