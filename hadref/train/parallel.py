"""Data-parallel training over MPI ranks (mpi4py): who computes which rows, one Allreduce.

``mpiexec -n P hadref distill ...`` starts P copies of the same job. Every rank reads the
same data and walks the same :class:`~hadref.data.batching.BatchStream`, so every rank
holds every minibatch; rank r computes the forward and backward of its contiguous share of
the rows (:meth:`Ranks.rows`, :func:`batch_share`), with its loss gradients weighted by its
share of the batch (examples for the output losses, valid query rows for the attention KL:
the losses are means over those), so that the sum of the ranks' gradients is the gradient
of the whole batch. :class:`GradientSum` sums them with one ``Allreduce`` per step over a
single flat float32 buffer (all gradients, the weighted losses, the Ctrl-C flag), sized
once and reused. Clipping, Adam, c and the stage then follow from identical numbers on
every rank; :meth:`Ranks.check_same` compares a parameter checksum now and then.
Evaluation and sigma estimation split their minibatches round-robin and sum results
with :meth:`Ranks.sum_exact` (each slot is filled by one rank, zeros elsewhere: the sum is
exact, so they equal the one-process results bit for bit). Rank 0 alone writes files.

Without mpiexec (or with P = 1 and no mpi4py) :data:`SINGLE` stands for the one process:
every method is the identity and training runs exactly as without this module.

Only the uppercase, buffer-based mpi4py methods are used (no pickled objects).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from hadref.errors import HadrefError

# environment variables that mpiexec / mpirun of MPICH, Intel MPI, Open MPI, PMIx set
_LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")

CHECK_EVERY = 100   # steps between two parameter checksums across ranks (also at stage ends)


def launched_by_mpiexec() -> str | None:
    """The name of the first mpiexec environment variable set in this process, else None."""
    return next((name for name in _LAUNCH_VARS if os.environ.get(name) is not None), None)


class Ranks:
    """The P processes of one data-parallel run (``comm``: an mpi4py communicator; None:
    the one process of a run without MPI).

    rank, size: this process's rank and P; ``is_root``: rank 0, the one that writes files.
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """True under MPI (even with P = 1: the collectives then run over one rank)."""
        return self.comm is not None

    def rows(self, n: int) -> tuple[int, int]:
        """[lo, hi): this rank's contiguous share of n rows (the first n % P ranks get one
        more); a pure function of (n, rank, P)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def owns(self, j: int) -> bool:
        """Whether item j of a round-robin split (evaluation batches, sigma minibatches) is
        this rank's."""
        return j % self.size == self.rank

    def sum_exact(self, array: np.ndarray) -> np.ndarray:
        """Sum ``array`` (C-contiguous, float32 or float64) over the ranks in place and
        return it. Exact when each element is nonzero on at most one rank."""
        if self.comm is not None:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return array

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 wrote a file the others read next)."""
        if self.comm is not None:
            self.comm.Barrier()

    def check_same(self, params: dict, step: int) -> None:
        """Raise HadrefError on every rank when the ranks' parameters differ (an integer
        checksum of every bit of every parameter, gathered from all ranks)."""
        if self.comm is None or self.size == 1:
            return
        total = np.uint64(0)
        with np.errstate(over="ignore"):
            for name in sorted(params):
                p = np.ascontiguousarray(params[name])
                total += p.reshape(-1).view(np.uint32).sum(dtype=np.uint64)
        mine = np.array([total], dtype=np.uint64)
        every = np.empty(self.size, dtype=np.uint64)
        self.comm.Allgather(mine, every)
        if np.any(every != every[0]):
            bad = [r for r in range(self.size) if every[r] != every[0]]
            raise HadrefError(f"MPI ranks diverged: after step {step} the parameters of rank(s) "
                              f"{', '.join(map(str, bad))} differ from rank 0's (was every rank "
                              "started with the same files, settings and hadref version?)")


SINGLE = Ranks(None)
_CURRENT: Ranks | None = None


def current_ranks() -> Ranks:
    """The ranks of this process's run: MPI.COMM_WORLD when launched by mpiexec, else
    :data:`SINGLE`. Under mpiexec without mpi4py: HadrefError (one line)."""
    global _CURRENT
    if _CURRENT is None:
        var = launched_by_mpiexec()
        if var is None:
            _CURRENT = SINGLE
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise HadrefError(f"launched by mpiexec ({var} is set) but mpi4py is not installed: "
                                  "pip install 'hadref[mpi]' (or run without mpiexec)") from None
            _CURRENT = Ranks(MPI.COMM_WORLD)
            _warn_oversubscribed(_CURRENT)
    return _CURRENT


def _threads() -> int:
    """Threads one rank uses: the larger of Numba's and OpenBLAS's (their env settings)."""
    cores = os.cpu_count() or 1
    numba_threads = int(os.environ.get("NUMBA_NUM_THREADS") or cores)
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or cores
    return max(numba_threads, int(blas))


def _warn_oversubscribed(ranks: Ranks) -> None:
    from mpi4py import MPI

    local = ranks.comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        n_local, local_rank = local.Get_size(), local.Get_rank()
    finally:
        local.Free()
    cores, threads = os.cpu_count() or 1, _threads()
    if local_rank == 0 and n_local * threads > cores:
        per_rank = max(1, cores // n_local)
        print(f"hadref: warning: {n_local} MPI ranks x {threads} threads on this host exceed its "
              f"{cores} cores: set NUMBA_NUM_THREADS={per_rank} OPENBLAS_NUM_THREADS={per_rank}",
              file=sys.stderr, flush=True)


# --- one step's share and its gradient sum ---------------------------------------------------

@dataclass
class Share:
    """A rank's rows of a minibatch: ``batch`` (a Batch of rows [lo, hi), same width),
    ``example_weight`` = its examples / the batch's, ``row_weight`` = its valid tokens
    (attention query rows) / the batch's, ``first_row`` = lo."""

    batch: object
    example_weight: float
    row_weight: float
    first_row: int


def batch_share(batch, ranks: Ranks) -> Share:
    """This rank's :class:`Share` of ``batch`` (the whole batch, weights 1, for one rank).

    The rows keep the batch's padded width, so each example's forward is the one it has in
    the whole batch."""
    from hadref.data.batching import Batch

    n = len(batch)
    if ranks.size == 1:
        return Share(batch, 1.0, 1.0, 0)
    if n < ranks.size:
        raise HadrefError(f"a minibatch of {n} examples cannot be split over {ranks.size} MPI "
                          f"ranks: use --batch-size >= {ranks.size} (and as many training examples)")
    lo, hi = ranks.rows(n)
    part = Batch(batch.input_ids[lo:hi], batch.token_type_ids[lo:hi],
                 batch.attention_mask[lo:hi], batch.labels[lo:hi], batch.index[lo:hi])
    valid = int(np.count_nonzero(batch.attention_mask))
    mine = int(np.count_nonzero(part.attention_mask))
    return Share(part, (hi - lo) / n, mine / max(valid, 1), lo)


class GradientSum:
    """The one Allreduce of a training step, over a flat float32 buffer sized once.

    Layout: every gradient in ``params`` order, then ``n_scalars`` numbers (weighted
    losses), then one Ctrl-C flag. ``nbytes`` is the buffer's size; an allreduce of
    ``nbytes`` sends about ``2 (P-1)/P * nbytes`` from each rank (reduce-scatter +
    allgather, MPICH's choice for large buffers). ``seconds`` accumulates the time spent in
    Allreduce (the benchmark reads it).
    """

    def __init__(self, params: dict, ranks: Ranks, n_scalars: int):
        self.ranks = ranks
        self.names = list(params)
        self.n_params = sum(int(p.size) for p in params.values())
        self.n_scalars = int(n_scalars)
        self.buffer = np.zeros(self.n_params + self.n_scalars + 1, dtype=np.float32)
        self.views, offset = {}, 0
        for name in self.names:
            p = params[name]
            self.views[name] = self.buffer[offset:offset + p.size].reshape(p.shape)
            offset += p.size
        self.seconds = 0.0
        self.calls = 0

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def __call__(self, grads: dict, scalars, stop: bool):
        """(summed gradients {name: view of the buffer}, summed scalars (float64 array),
        whether any rank asked to stop). The views are overwritten by the next call."""
        for name in self.names:
            np.copyto(self.views[name], grads[name])
        tail = self.buffer[self.n_params:]
        tail[:self.n_scalars] = scalars
        tail[-1] = 1.0 if stop else 0.0
        t0 = time.perf_counter()
        self.ranks.sum_exact(self.buffer)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return self.views, tail[:self.n_scalars].astype(np.float64), bool(tail[-1] > 0)


def scale(array, weight: float):
    """array * weight in its dtype (array itself when weight is 1: exact for one rank)."""
    if array is None or weight == 1.0:
        return array
    return array * array.dtype.type(weight)


def bytes_per_step(n_params: int, size: int) -> int:
    """Bytes one rank sends per step for n_params float32 gradients over `size` ranks
    (reduce-scatter + allgather: 2 (P-1)/P of the buffer; 0 for one rank)."""
    return int(math.ceil(2 * (size - 1) / size * 4 * n_params)) if size > 1 else 0


def abort_if_parallel(code: int) -> None:
    """In a run of several MPI ranks, end all of them now with exit code ``code`` (an error
    on one rank would otherwise leave the others waiting in a collective forever)."""
    if "mpi4py.MPI" in sys.modules and _CURRENT is not None and _CURRENT.size > 1:
        _CURRENT.comm.Abort(code)


def rank_note() -> str:
    """' (rank r of P)' for messages of a rank other than 0, else ''."""
    if _CURRENT is None or _CURRENT.is_root:
        return ""
    return f" (rank {_CURRENT.rank} of {_CURRENT.size})"
