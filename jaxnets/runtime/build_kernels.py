"""`python -m jaxnets.runtime.build_kernels`: build jaxnets' CPU kernels ahead of time (native.main)."""

from __future__ import annotations

if __name__ == "__main__":
    import logging

    from .native import main

    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # a process of its own: the build's warning
    raise SystemExit(main())
