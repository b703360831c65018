"""Top-k for a whole block at once (argpartition, then a sort of k) ranks as a
stable sort of every class does: highest first, ties in index order."""

import numpy as np

from camserve.server.pipeline.responses import top_k


def test_top_k_of_a_block_equals_a_stable_sort():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        classes = int(rng.integers(2, 50))
        k = int(rng.integers(1, classes + 1))
        # Few distinct values: ties everywhere, at the cut and inside the top k.
        probabilities = (rng.integers(0, 4, (4, classes)) / 4).astype(np.float32)
        want = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(probabilities, k), want)
        np.testing.assert_array_equal(top_k(probabilities[1], k), want[1])  # one row


def test_top_k_of_a_thousand_classes():
    probabilities = np.random.default_rng(1).random((32, 1000)).astype(np.float32)
    np.testing.assert_array_equal(top_k(probabilities, 5), np.argsort(-probabilities, axis=1, kind="stable")[:, :5])
