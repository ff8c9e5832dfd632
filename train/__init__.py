"""Training: DeepSpeed entry points (SFT, DPO, draft distillation), the evaluation harness and gate.

`train.run` is what the DeepSpeed launcher starts on every process; `train.launch` builds that
launch (one host, a hostfile, or explicit node ranks); `train.evaluate` scores a model on the
shipped evaluation sets and `train.gate` compares a candidate with production; `train.records`
types what a run leaves in its directory (`summary.json`, `run.json`, `eval.json`,
`registered.json`) and builds the lineage its candidate carries. Weights come out as HF
safetensors; registering them is the `register` flow's job.
"""
