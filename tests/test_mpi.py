"""Data-parallel training (hadref.train.parallel): the pieces in one process, and whole runs
under ``mpiexec -n 2`` (tests/mpi_job.py, a tiny model on generated data).

Under MPI: 2 ranks give the 1-rank weights within the float32 summation bound below, and
``mpiexec -n 1`` gives them exactly; both ranks hold bit-identical weights; a rank killed
mid-run leaves an intact checkpoint that 1 rank (or 2) resumes. The MPI tests skip, saying
why, when mpi4py or mpiexec is absent (``pip install '.[mpi]'``).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hadref.data.batching import Batch
from hadref.engine.layers.attention import FloatAttentionCore
from hadref.engine.layers.dropout import BatchRows, dropout_forward
from hadref.errors import HadrefError
from hadref.train import parallel
from hadref.train.checkpoint import load_checkpoint
from hadref.train.parallel import Ranks, batch_share

JOB = Path(__file__).with_name("mpi_job.py")

# Measured (Xeon, 2 ranks vs 1, batch 7 split 4 + 3, lr 1e-3): after the 12 distillation
# steps max |w_2 - w_1| = 5.9e-6 (3.0e-6 with dropout), after 6 fine-tuning steps 5.6e-7,
# against a largest weight change of 9e-3: float32 sums in another order, amplified by
# Adam's division for gradients near 0. The bound is 4x the largest measured difference.
WEIGHT_ATOL = 2.5e-5
GRAD_NORM_RTOL = 1e-5   # step-1 gradient norm (measured: <= 1e-7 relative)


# --- one process: the split, the weights, the dropout rows ------------------------------------

class _FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("n,size", [(7, 2), (16, 3), (5, 5), (33, 4)])
def test_rows_partition_and_weights_sum_to_one(n, size):
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, 9, n)
    mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.int64)
    batch = Batch(mask * 7, mask * 0, mask, np.arange(n), np.arange(n))
    shares = [batch_share(batch, Ranks(_FakeComm(r, size))) for r in range(size)]
    rows = np.concatenate([s.batch.index for s in shares])
    assert np.array_equal(rows, np.arange(n))               # contiguous, in order, each once
    assert max(len(s.batch) for s in shares) - min(len(s.batch) for s in shares) <= 1
    assert sum(s.example_weight for s in shares) == pytest.approx(1.0, abs=1e-12)
    assert sum(s.row_weight for s in shares) == pytest.approx(1.0, abs=1e-12)
    assert all(s.batch.input_ids.shape[1] == 9 for s in shares)   # the batch's width kept


def test_batch_smaller_than_ranks_is_an_error():
    mask = np.ones((2, 3), np.int64)
    batch = Batch(mask, mask, mask, np.arange(2), np.arange(2))
    with pytest.raises(HadrefError, match="--batch-size >= 3"):
        batch_share(batch, Ranks(_FakeComm(0, 3)))


def test_dropout_of_rows_equals_rows_of_batch_dropout():
    """BatchRows(rng, lo) gives rows [lo, hi) the masks of the whole batch's forward."""
    x = np.random.default_rng(0).standard_normal((7, 5, 6)).astype(np.float32)
    whole, _ = dropout_forward(x, 0.3, np.random.default_rng(1), True)
    for lo, hi in [(0, 4), (4, 7), (3, 5)]:
        part, _ = dropout_forward(x[lo:hi], 0.3, BatchRows(np.random.default_rng(1), lo), True)
        assert np.array_equal(part, whole[lo:hi])
    # and the shift matters: without it the rows get other masks
    plain, _ = dropout_forward(x[4:7], 0.3, np.random.default_rng(1), True)
    assert not np.array_equal(plain, whole[4:7])


def test_attention_dropout_of_rows_equals_rows_of_batch():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((5, 2, 6, 4)).astype(np.float32) for _ in range(3))
    key_mask = np.ones((5, 6), bool)
    key_mask[3, 4:] = False
    core = FloatAttentionCore()
    whole, _, _ = core.forward(q, k, v, key_mask, 0, False, dropout=(0.2, np.random.default_rng(3)))
    part, _, _ = core.forward(q[2:], k[2:], v[2:], key_mask[2:], 0, False,
                              dropout=(0.2, BatchRows(np.random.default_rng(3), 2)))
    assert np.array_equal(part, whole[2:])


class _GatherComm(_FakeComm):
    """Rank 0 of 2 whose partner reports the given checksum offset."""

    def __init__(self, offset):
        super().__init__(0, 2)
        self.offset = offset

    def Allgather(self, mine, every):
        every[0] = mine[0]
        every[1] = mine[0] + np.uint64(self.offset)


def test_parameter_check_stops_diverged_ranks():
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    Ranks(_GatherComm(0)).check_same(params, 10)          # same bits: nothing happens
    with pytest.raises(HadrefError, match="ranks diverged: after step 10 .* rank\\(s\\) 1"):
        Ranks(_GatherComm(1)).check_same(params, 10)
    # the checksum sees a change of one bit of one parameter
    flipped = {k: v.copy() for k, v in params.items()}
    flipped["b"].view(np.uint32)[2] ^= 1
    assert _checksum(flipped) != _checksum(params)


def _checksum(params):
    seen = {}

    class Comm(_FakeComm):
        def Allgather(self, mine, every):
            seen["sum"] = int(mine[0])
            every[:] = mine[0]

    Ranks(Comm(0, 2)).check_same(params, 0)
    return seen["sum"]


def test_mpiexec_without_mpi4py_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py -> ImportError
    monkeypatch.setattr(parallel, "_CURRENT", None)
    with pytest.raises(HadrefError) as err:
        parallel.current_ranks()
    assert "mpi4py is not installed" in str(err.value) and "\n" not in str(err.value)


def test_without_mpiexec_one_process(monkeypatch):
    for name in parallel._LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(parallel, "_CURRENT", None)
    assert parallel.current_ranks() is parallel.SINGLE
    assert parallel.bytes_per_step(1000, 1) == 0 and parallel.bytes_per_step(1000, 2) == 4000


# --- whole runs under mpiexec ---------------------------------------------------------------

def _mpiexec() -> str:
    pytest.importorskip("mpi4py", reason="mpi4py absent: pip install '.[mpi]' (mpi4py + mpich)")
    local = Path(sys.executable).with_name("mpiexec")
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec not found (pip install mpich, or a system MPI)")
    return found


def _env():
    env = {k: v for k, v in os.environ.items() if k not in parallel._LAUNCH_VARS}
    env.update(OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


def _run(out, job, ranks=None, *extra, expect_ok=True, timeout=600):
    cmd = ([_mpiexec(), "-n", str(ranks)] if ranks else []) + [sys.executable, str(JOB), job,
                                                                "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _load(out, rank=0):
    z = np.load(f"{out}.rank{rank}.npz")
    params = {k[2:]: z[k] for k in z.files if k.startswith("p.")}
    return params, z["losses"], z["grad_norms"], json.loads(str(z["meta"]))


def _max_diff(a, b):
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


@pytest.mark.parametrize("job", ["distill", "finetune"])
def test_two_ranks_equal_one_rank(job, tmp_path):
    _mpiexec()
    runs = {}
    for dropout in (False, True):
        flag = ["--dropout"] if dropout else []
        one, mpi_one, two = (tmp_path / f"{name}-{dropout}" for name in ("one", "mpi1", "two"))
        _run(one, job, None, *flag)
        _run(mpi_one, job, 1, *flag)
        _run(two, job, 2, *flag)
        w1, l1, g1, m1 = _load(one)
        wm, lm, gm, mm = _load(mpi_one)
        w2, l2, g2, m2 = _load(two)
        w2b, l2b, _, _ = _load(two, rank=1)
        assert m2["size"] == 2 and mm["size"] == 1 and m1["size"] == 1
        # mpiexec -n 1 is exactly the one-process run
        assert _max_diff(w1, wm) == 0.0 and np.array_equal(l1, lm)
        # both ranks hold the same model, bit for bit
        assert _max_diff(w2, w2b) == 0.0 and np.array_equal(l2, l2b)
        # 2 ranks: the same run up to float32 summation order
        assert _max_diff(w1, w2) < WEIGHT_ATOL
        assert g2[0] == pytest.approx(g1[0], rel=GRAD_NORM_RTOL)
        np.testing.assert_allclose(l2, l1, rtol=1e-5, atol=1e-7)   # losses near 1e-5
        assert m1["metrics"] == m2["metrics"]   # dev evaluation split over ranks, same result
        if job == "distill":
            assert np.array_equal(w1["had.sigma_q"], w2["had.sigma_q"])   # split sigma: exact
        runs[dropout] = w1
    # dropout did change the run, far beyond the bound (so its masks were compared above)
    assert _max_diff(runs[False], runs[True]) > 100 * WEIGHT_ATOL


def test_killed_rank_leaves_checkpoint_that_one_or_two_ranks_resume(tmp_path):
    _mpiexec()
    ckpt = tmp_path / "run.ckpt.h5"
    proc = _run(tmp_path / "killed", "distill", 2, "--checkpoint", str(ckpt), "--kill-rank", "1",
                "--kill-step", "5", expect_ok=False)
    assert proc.returncode != 0
    _, meta = load_checkpoint(ckpt)            # intact (written atomically by rank 0)
    assert meta["step"] in (4, 5), meta["step"]
    copy = tmp_path / "copy.ckpt.h5"
    shutil.copyfile(ckpt, copy)
    # resume with 1 rank: continues to the end, within the bound of the 1-rank run
    _run(tmp_path / "resumed1", "distill", None, "--checkpoint", str(ckpt), "--resume")
    _run(tmp_path / "straight1", "distill", None)
    w_resumed, losses, _, _ = _load(tmp_path / "resumed1")
    w_straight, *_ = _load(tmp_path / "straight1")
    assert len(losses) == 12 - meta["step"]
    assert _max_diff(w_resumed, w_straight) < WEIGHT_ATOL
    # resume with 2 ranks: bit for bit the uninterrupted 2-rank run
    _run(tmp_path / "resumed2", "distill", 2, "--checkpoint", str(copy), "--resume")
    _run(tmp_path / "straight2", "distill", 2)
    assert _max_diff(_load(tmp_path / "resumed2")[0], _load(tmp_path / "straight2")[0]) == 0.0


def test_ctrl_c_on_one_rank_stops_all_after_the_same_step(tmp_path):
    """SIGINT reaches rank 1 alone after step 3: the next step's Allreduce carries it, so
    both ranks stop after step 4 and rank 0 checkpoints that step."""
    _mpiexec()
    ckpt = tmp_path / "int.ckpt.h5"
    proc = _run(tmp_path / "int", "finetune", 2, "--steps", "40", "--checkpoint", str(ckpt),
                "--sigint-rank", "1", "--sigint-step", "3", expect_ok=False, timeout=300)
    # (had rank 1 stopped alone, rank 0 would wait in the next Allreduce: a timeout here)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert load_checkpoint(ckpt)[1]["step"] == 4


def test_cli_distill_under_mpiexec(encoder_file, glue_slice, tmp_path):
    """`mpiexec -n 2 hadref distill` of a head-less encoder: teacher fine-tune, then the
    four stages; rank 0 prints the one result and writes the files."""
    mpiexec = _mpiexec()
    hadref = Path(sys.executable).with_name("hadref")
    out = tmp_path / "student.h5"
    cmd = [mpiexec, "-n", "2", str(hadref), "distill", str(encoder_file), "--task", "sst2",
           "--data", str(glue_slice), "-o", str(out), "--gamma", "0.5", "--stage3-steps", "1",
           "--stage4-steps", "1", "--sigma-batches", "3", "--max-len", "24", "--batch-size", "8",
           "--top-n", "5", "--ft-steps", "3", "--ft-batch-size", "8", "--quiet", "--json"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout            # one result, from rank 0
    result = json.loads(lines[0])
    assert Path(result["student"]) == out and out.is_file()
    assert not out.with_name("student.ckpt.h5").exists()          # removed at the end
    log = [json.loads(line) for line in out.with_name("student.log.jsonl").read_text().splitlines()]
    assert sum(1 for r in log if r.get("event") == "start") == 1  # one writer
    assert sum(1 for r in log if "l_out" in r) == 3 + 5 + 1 + 1
