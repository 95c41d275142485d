"""Data: SFT records (one per model turn) and their synthesis from videos (DESIGN.md §2, §6)."""
