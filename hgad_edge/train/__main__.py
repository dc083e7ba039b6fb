"""``python -m hgad_edge.train`` / ``torchrun --nproc_per_node N -m hgad_edge.train``.

Takes exactly the arguments of ``hgad-edge train`` (it *is* that verb: ``hgad_edge.cli``'s parser
and ``_cmd_train``), after joining the process group that ``torchrun`` describes in the
environment (gloo on CPU, NCCL when CUDA is available; ``--dist-backend`` overrides). Rank 0
shows progress, writes checkpoints and the artifact; the other ranks stay quiet. Without
``torchrun`` it is a plain single-process ``hgad-edge train``.

Example::

    torchrun --nproc_per_node 4 -m hgad_edge.train --data /data/mvtec --out runs/big --epochs 20
    torchrun --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --nproc_per_node 8 -m hgad_edge.train ...
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional, Sequence, Tuple

from hgad_edge.train import distributed


def _split_backend(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Take ``--dist-backend X`` / ``--dist-backend=X`` out of argv (the train verb does not know it)."""
    rest, backend, it = [], None, iter(argv)
    for a in it:
        if a == "--dist-backend":
            backend = next(it, None)
            if backend is None:
                raise ValueError("--dist-backend needs a value: gloo or nccl")
        elif a.startswith("--dist-backend="):
            backend = a.split("=", 1)[1]
        else:
            rest.append(a)
    if backend is not None and backend not in distributed.BACKENDS:  # also without torchrun: a typo is a typo
        raise ValueError(f"unknown --dist-backend {backend!r}; choose one of {', '.join(distributed.BACKENDS)}")
    return backend, rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Join the process group (if any), run ``hgad-edge train`` with ``argv``, leave the group."""
    from hgad_edge.cli.commands import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nExtra option: --dist-backend {gloo,nccl}.\n")
        return cli_main(["train", "--help"])
    try:
        backend, argv = _split_backend(argv)
        info = distributed.init(backend)
    except ValueError as e:
        print(f"hgad_edge.train: error: {e}", file=sys.stderr)
        return 2
    if not info.is_main:
        # Configure logging before cli.main does, so its basicConfig leaves other ranks at WARNING.
        logging.basicConfig(level=logging.WARNING, format=f"rank {info.rank} %(levelname)s %(name)s: %(message)s")
        if "--quiet" not in argv:
            argv.append("--quiet")
    try:
        with distributed.main_process_output(info):
            return cli_main(["train", *argv])
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
