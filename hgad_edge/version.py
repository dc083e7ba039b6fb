"""The package version (one definition; ``hgad_edge.__version__`` and the artifact's record read it)."""
__version__ = "0.1.0"
