"""sage_fast: a fast, usable implementation of the SAGE any-horizon long-video agent.

Video I/O lives in :mod:`sage_fast.video`; the command line is ``sage-fast``.
"""

__version__ = "0.1.0"

__all__ = ["Agent", "AgentConfig", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 (lazy: `import sage_fast` stays light for the CLI)
    if name in ("Agent", "AgentConfig"):
        from sage_fast.agent import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'sage_fast' has no attribute {name!r}")
