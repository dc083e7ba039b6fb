"""The ``hgad-edge`` command line: thin verbs over the library (every heavy import happens inside a verb)."""
from hgad_edge.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
