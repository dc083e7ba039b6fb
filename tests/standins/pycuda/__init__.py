"""Test-only stand-in of the ``pycuda`` package: only ``pycuda.driver`` (see ``driver.py``)."""
from tests.standins.pycuda import driver  # noqa: F401  (``import pycuda.driver as cuda`` needs the attribute)

VERSION = (2024, 1)
VERSION_TEXT = "2024.1-standin"
