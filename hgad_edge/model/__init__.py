"""The network: frozen timm backbone → per-level conditional flows → hierarchical Gaussian-mixture prior."""
from hgad_edge.model.backbone import FeatureExtractor, load_state_dict_file, pypi_weights
from hgad_edge.model.flow import build_flow, positional_encoding_2d
from hgad_edge.model.hgad import HGAD, FlowOutput, MixturePrior
from hgad_edge.model.mixture import inter_logits, intra_lse, log_likelihood, squared_distances

__all__ = ["FeatureExtractor", "load_state_dict_file", "pypi_weights", "build_flow", "positional_encoding_2d",
           "HGAD", "FlowOutput", "MixturePrior", "inter_logits", "intra_lse", "log_likelihood",
           "squared_distances"]
