"""``python -m hgad_edge.stream``: the stream command line (``hgad_edge.stream.cli``)."""
import sys

from hgad_edge.stream.cli import main

sys.exit(main())
