"""What every API's answer is made of, computed once for a whole batch of rows."""

from __future__ import annotations

import numpy as np


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k highest probabilities, highest first, ties in
    index order ([N, C] -> [N, k]; [C] -> [k]): argpartition, then a sort of k."""
    scores = np.atleast_2d(probabilities)
    k = min(k, scores.shape[-1])
    if k < scores.shape[-1]:
        # Ties at the k-th place must keep index order: partition on (-p, index) pairs.
        part = np.sort(np.argpartition(-scores, k - 1, axis=-1)[:, :k], axis=-1)  # index order: ties stay in it
        threshold = np.take_along_axis(scores, part, -1).min(axis=-1, keepdims=True)
        if (np.sum(scores >= threshold, axis=-1) > k).any():  # a tie at the cut: take the sorted order
            order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
        else:
            picked = np.take_along_axis(scores, part, -1)
            order = np.take_along_axis(part, np.argsort(-picked, axis=-1, kind="stable"), -1)
    else:
        order = np.argsort(-scores, axis=-1, kind="stable")
    return order if probabilities.ndim == 2 else order[0]

