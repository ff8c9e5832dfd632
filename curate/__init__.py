"""Curation: pure functions that turn consented traces into clean, documented datasets.

Each stage is a function over `Record`s that returns the survivors and its own counters:
scrub (PII and secrets) → dedup (exact, near, semantic) → quality filters → decontamination →
set builders (SFT, DPO, distillation in TRL formats) → data card; `curate.catalog` keeps the
datasets directory (`latest.json`, replaced sets). Nothing here talks to the network or to a
model; the Prefect flows in `flows/` wire the stages and do the I/O.
"""
