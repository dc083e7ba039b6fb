"""The command lines' argument parser: argparse, with a usage error as one line.

Every verb (``hgad-edge …``, ``python -m hgad_edge.stream``, ``python -m hgad_edge.train``)
builds on it, so a bad flag gives ``prog: error: … (see prog --help)`` and exit code 2 — the
usage block is what ``--help`` is for. Bottom layer: the stream layer may not import ``cli``.
"""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one stderr line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
