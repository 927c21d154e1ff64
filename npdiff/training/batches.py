"""Shuffled minibatches of the training data, x_0 ~ q(x_0) for Algorithm 1, in an order a checkpoint can resume.

Shape glossary: M training points, D data dims, B batch size.
"""

from __future__ import annotations

import numpy as np

from npdiff import backend


class Batches:
    """Shuffled minibatches without replacement: each epoch is one permutation of the M points, cut
    into M // B batches (the last partial batch is dropped). The state (permutation, position) is
    saved in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would.
    labels: optional (M,) class labels, shuffled with the points.
    """

    def __init__(self, data, batch_size: int, rng, labels=None) -> None:
        if isinstance(batch_size, bool) or not 1 <= batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must lie in 1..{data.shape[0]} (the number of points), got {batch_size}")
        self.data, self.labels, self.batch_size, self.rng = data, labels, int(batch_size), rng
        self.perm, self.pos, self.shuffled, self.shuffled_labels = None, 0, None, None

    def next(self):
        """(x0, y): the next (B, D) batch, a view into this epoch's shuffled copy of the data, and its (B,)
        labels (None without labels)."""
        if self.perm is None or self.pos + self.batch_size > self.data.shape[0]:
            self._shuffle(backend.permutation(self.rng, self.data.shape[0]), 0)
        rows = slice(self.pos, self.pos + self.batch_size)
        self.pos += self.batch_size
        return self.shuffled[rows], None if self.labels is None else self.shuffled_labels[rows]

    def _shuffle(self, perm, pos: int) -> None:
        self.perm, self.pos = perm, int(pos)
        perm = backend.asarray(perm)
        self.shuffled = self.data[perm]  # one gather per epoch; batches are slices
        if self.labels is not None:
            self.shuffled_labels = self.labels[perm]

    def state_dict(self) -> dict:
        if self.perm is None:
            return {}
        return {"perm": backend.to_numpy(self.perm), "pos": self.pos, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue a stored epoch; refuses a state made for other data or another batch size."""
        if not state:
            return
        perm, m = np.asarray(state["perm"]), self.data.shape[0]
        if perm.shape != (m,) or perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm), np.arange(m)):
            raise ValueError(f"the checkpoint's batch order is for {perm.size} points; the data have {m} "
                             "(resume with the data the run started with)")
        stored = state.get("batch_size", self.batch_size)
        if stored != self.batch_size:
            raise ValueError(f"the checkpoint was trained with batch_size {stored}; this run has {self.batch_size}")
        self._shuffle(perm, state["pos"])
