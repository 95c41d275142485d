"""sage_fast: a fast, usable implementation of the SAGE any-horizon long-video agent.

Video I/O lives in :mod:`sage_fast.video`; the command line is ``sage-fast``.
"""

__version__ = "0.1.0"
