"""The resumable position of an endless seeded batch stream.

A stream's epoch ``e`` is a list of index arrays, ``epoch_order(e)``, that depends only on
the seed and ``e``; so the whole data position of a run is ``(epoch, position)``, and a
checkpoint resumes the same batches. :class:`hadref.data.batching.BatchStream` (GLUE
examples) and :class:`hadref.data.text.WindowStream` (text windows) say how an epoch is
ordered and how a batch is made from indices; the walking, the state and its checks are here.
"""

from __future__ import annotations

import numpy as np

from hadref.errors import HadrefError


class SeededStream:
    """Base of the seeded batch streams: subclasses define ``epoch_order(epoch)`` (a list
    of int index arrays) and ``make_batch(indices)``."""

    def __init__(self, count: int, batch_size: int, seed: int, what: str):
        """count: examples in the data; what: their name in the error ('examples')."""
        if batch_size < 1:
            raise HadrefError(f"--batch-size must be at least 1, got {batch_size}")
        if count == 0:
            raise HadrefError(f"no training {what} to make batches from")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.epoch, self.position = 0, 0
        self._order = None   # (epoch, its order): one epoch's order is computed once

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def make_batch(self, indices: np.ndarray):
        raise NotImplementedError

    def _epoch(self) -> list[np.ndarray]:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self.epoch_order(self.epoch))
        return self._order[1]

    def batches_per_epoch(self) -> int:
        return len(self._epoch())

    def next(self):
        """The next batch; the next epoch starts where this one ends."""
        order = self._epoch()
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self._epoch()
        batch = self.make_batch(order[self.position])
        self.position += 1
        return batch

    def state(self) -> dict:
        """The data position: {'epoch', 'position', 'seed', 'batch_size'}."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size}

    def restore(self, state: dict) -> None:
        """Continue at a ``state()``; a different seed or batch size is an error."""
        if int(state["seed"]) != self.seed or int(state["batch_size"]) != self.batch_size:
            raise HadrefError(f"checkpoint data position was made with seed {state['seed']} and "
                              f"batch size {state['batch_size']}, not {self.seed} and "
                              f"{self.batch_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
