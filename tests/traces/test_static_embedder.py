"""The static embedder's own sum gives model2vec's vectors (same truncation, same tokens)."""

from __future__ import annotations

import numpy as np

from traces.embedders import load


def test_vectors_agree_with_model2vec_encode():
    e = load("static")
    long = " ".join(f"word{i} the quick brown fox" for i in range(400))  # past the 256-token cut
    texts = ["Paris is the capital of France.", long, "", "???", "日本語のテキスト",
             "refund order 4411 to card ending 0042"]
    ours = e.embed(texts)
    ref = np.asarray(e.model.encode(texts, max_length=256, use_multiprocessing=False,
                                    show_progress_bar=False), dtype=np.float32)
    ref /= np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), [1, 1, 0, 1, 1, 1], atol=1e-5)
    assert ((ours * ref).sum(axis=1)[[0, 1, 3, 4, 5]] > 0.9999).all()
    assert not ours[2].any()  # no token: the zero vector, as model2vec's
    assert (ours[0] @ ours[5]) < 0.9  # different texts stay apart
    assert e.embed([]).shape == (0, 384)
