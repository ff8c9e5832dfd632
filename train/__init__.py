"""Training: DeepSpeed entry points (SFT, DPO, draft distillation) and the evaluation gate.

Not built yet; see the README's roadmap.
"""
