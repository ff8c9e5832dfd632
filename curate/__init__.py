"""Curation: pure functions that turn traces into clean SFT / DPO / distillation datasets.

Not built yet; see the README's roadmap.
"""
