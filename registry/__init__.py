"""The signed model registry: the root of trust of the swarm.

It owns model versions (import from HF directories or GGUF files, manifests with per-tensor chunk
Merkle roots, lineage, erasure notices), Ed25519 signing, the trust policy (keys, roles, thresholds,
rotation, revocation), channels with promotion history and k-of-n proposals, and storage as a static tree of signed metadata plus
content-addressed blobs on a local directory or any fsspec URL.

It knows nothing about serving, and `import registry` does not import torch: the few functions that
need it (model import, loading tensors) import it where they run.
"""
