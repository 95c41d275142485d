"""Supervised fine-tuning of the SAGE-MM orchestrator on per-turn SFT records (``sage-fast sft``).

``SFTDataset`` reads records lazily (frames decoded and tokenized on access), ``SFTCollator`` packs
a batch into one padding-free row, ``train_sft`` runs TRL's ``SFTTrainer`` with the paper's
defaults (``SFTConfig``); TRL itself is imported only when training starts.
"""

from __future__ import annotations

from sage_fast.sft.collator import SFTCollator
from sage_fast.sft.dataset import PromptBuilder, SFTDataset
from sage_fast.sft.trainer import SFTConfig, train_sft

__all__ = ["PromptBuilder", "SFTCollator", "SFTConfig", "SFTDataset", "train_sft"]
