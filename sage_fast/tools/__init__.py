"""SAGE's tools (issue 4). Built so far: :mod:`sage_fast.tools.schema`, the function schemas the
model sees and the validation of the arguments it sends back."""
