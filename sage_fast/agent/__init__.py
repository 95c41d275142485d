"""The SAGE agent: Stage-1 / Stage-2 loop over an orchestrator VLM and its tools (issue 4).

Built so far: :mod:`sage_fast.agent.parsing` (model output -> JSON, never crashing). The loop,
backends and trajectories follow.
"""
