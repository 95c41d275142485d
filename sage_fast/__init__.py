"""sage_fast: a fast, usable implementation of the SAGE any-horizon long-video agent."""
