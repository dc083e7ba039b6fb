"""Import first: ``--threads N`` must reach OpenMP/BLAS before numpy or torch start their pools."""
import os
import sys


def threads_from_argv() -> None:
    if "--threads" in sys.argv[:-1]:
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = n


threads_from_argv()
