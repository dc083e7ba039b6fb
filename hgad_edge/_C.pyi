"""Type stub of the private native extension hgad_edge._C (csrc/bindings.cpp).

Use it through hgad_edge.gmm.GaussianMixture; array arguments must be float32 C-contiguous
numpy arrays (they are passed without copies; anything else is rejected, not converted).
"""
from typing import Tuple

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def has_cuda() -> bool:
    """True when compiled with CUDA (a GPU may still be absent)."""

def cpu_threads() -> int:
    """OpenMP threads the CPU kernel uses (1 without OpenMP)."""

def route_cuda(votes: int, means: int, n_levels: int, n_classes: int, class_index: int, class_out: int,
               stream: int) -> None:
    """class_out (1,) int32 on the device = class_index (>= 0; votes, means not read), or for -1
    hgad_edge.gmm.route of votes and means (n_levels, n_classes) f32 row-major on the device (the
    largest level-mean vote share, ties by the level-mean posterior mean, then the first; NaN wins).
    Asynchronous on `stream`, one tiny kernel.
    Raises ValueError on bad arguments, RuntimeError when built without CUDA."""

class GMMParams:
    """One level's mixture, laid out once for the kernels (transposed, lane-padded centers)."""

    def __init__(self, mu: F32, log_pi_inter: F32, mu_intra: F32, log_pi_intra: F32) -> None: ...
    @property
    def n_classes(self) -> int: ...
    @property
    def n_intra(self) -> int: ...
    @property
    def dim(self) -> int: ...
    def fused(self, z: F32, logdet: F32, class_index: int) -> Tuple[F32, F32, F32, int]:
        """(logp (N,), entropy (N,), posterior_mean (C,), class used); class_index -1 routes."""
    def fused_into(self, z: F32, logdet: F32, class_index: int, logp: F32, entropy: F32,
                   posterior_mean: F32) -> int:
        """fused() into caller-owned writeable float32 C-contiguous buffers; returns the class."""
    def fused_all(self, z: F32, logdet: F32) -> Tuple[F32, F32, F32]:
        """(logp of every class (N, C), entropy (N,), posterior_mean (C,)) in one pass."""
    def inter(self, z: F32) -> Tuple[F32, F32, F32]:
        """(entropy (N,), posterior_mean (C,), votes (C,): share of positions whose posterior argmax is c)."""
    def intra(self, z: F32, logdet: F32, class_index: int) -> F32:
        """logp (N,) of class class_index >= 0."""
    def posterior(self, z: F32) -> F32:
        """The inter-class posterior (N, C)."""
    def fused_cuda(self, z: int, z_half: bool, logdet: int, n: int, class_index: int, logp: int,
                   entropy: int, posterior_mean: int, votes: int, class_out: int, stream: int) -> None:
        """The CUDA kernel on raw device pointers, asynchronous on `stream` (a cudaStream_t).
        class_index -1 routes on THIS level only (votes (C,) f32 written; may be 0 for a given class). Raises RuntimeError when built without CUDA."""
    def inter_cuda(self, z: int, z_half: bool, n: int, entropy: int, mean: int, votes: int, stream: int) -> None:
        """Inter part on raw device pointers, asynchronous on `stream`: z (n, D) f32 (f16 when
        z_half) -> entropy (n,) f32, posterior image mean (C,) f32, vote shares (C,) f32 (zeroed
        first; n = 0: zeros).
        Raises ValueError on bad arguments, RuntimeError when built without CUDA."""
    def intra_cuda(self, z: int, z_half: bool, logdet: int, n: int, class_ptr: int, logp: int,
                   stream: int) -> None:
        """Intra part on raw device pointers, asynchronous on `stream`, for the int32 class at
        class_ptr (read in the kernel): logp (n,) f32; a class outside 0..C-1 gives NaN logp.
        Raises ValueError on bad arguments, RuntimeError when built without CUDA."""
