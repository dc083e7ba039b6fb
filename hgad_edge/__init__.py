"""hgad_edge: one unified HGAD model that finds and localizes defects in many product classes."""
from .config import ModelConfig, TrainConfig

__version__ = "0.1.0"
__all__ = ["ModelConfig", "TrainConfig", "__version__"]
