"""Orchestrator backends behind one ``generate(messages, frames, sampling)`` interface (issue 4).

Built so far: :mod:`sage_fast.models.openai_compatible` (vLLM / SGLang / any OpenAI-style server).
"""
