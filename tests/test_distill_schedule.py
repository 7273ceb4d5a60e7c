"""The c schedule and stage plan; checkpoints; the progress line."""

import io
import json
import math

import numpy as np
import pytest

from hadref.distill.schedule import Schedule, steps_until
from hadref.errors import HadrefError
from hadref.train.checkpoint import load_checkpoint, save_checkpoint
from hadref.train.progress import JsonLog, Progress


def test_quick_schedule_counts_and_c_values():
    gamma = math.exp(-(math.log(5) + math.log(20)) / 1500)
    s = Schedule(gamma=gamma, stage3_steps=1000, stage4_steps=1000, lr=2e-5, lr_stage4=5e-6)
    n1, n2 = s.stages[0].steps, s.stages[1].steps
    assert n1 + n2 in (1500, 1501) and s.total_steps == n1 + n2 + 2000
    assert s.c_at(0) == 5.0 and s.c_at(n1) == 1.0
    assert s.c_at(n1 - 1) > 1.0 >= 5.0 * gamma ** n1          # stage 1 ends when c reaches 1
    assert s.c_at(n1 + n2 - 1) > 0.05 >= gamma ** n2           # stage 2 ends at 0.05
    assert s.c_at(n1 + n2) is None                             # STE stages have no c
    cs = [s.c_at(k) for k in range(1, n1)]
    assert all(np.isclose(b / a, gamma) for a, b in zip([5.0] + cs, cs))  # decays per batch
    st3, _ = s.locate(n1 + n2)
    st4, j = s.locate(s.total_steps - 1)
    assert (st3.number, st3.transform, st3.attn_loss) == (3, "ste", True)
    assert (st4.number, st4.attn_loss, st4.lr, j) == (4, False, 5e-6, 999)
    assert s.stage_end(n1 - 1) and not s.stage_end(n1)
    with pytest.raises(IndexError):
        s.locate(s.total_steps)


def test_paper_schedule_and_ablations():
    s = Schedule(gamma=0.9995, stage3_steps=10_000, stage4_steps=10_000, lr=2e-5, lr_stage4=5e-6)
    assert [st.steps for st in s.stages] == [3219, 5990, 10_000, 10_000]
    no_tanh = Schedule(gamma=0.9995, stage3_steps=10, stage4_steps=10, lr=1, lr_stage4=1, tanh=False)
    assert [st.transform for st in no_tanh.stages] == ["ste"] * 4
    assert no_tanh.total_steps == 3219 + 5990 + 20
    no_ad = Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1, attn_loss=False)
    assert not any(st.attn_loss for st in no_ad.stages)
    ad_12 = Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1,
                     attn_loss_stages=[1, 2])
    assert [st.attn_loss for st in ad_12.stages] == [True, True, False, False]
    both = Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1, attn_loss=False,
                    attn_loss_stages=[1, 2])   # w/o AD wins
    assert not any(st.attn_loss for st in both.stages)
    with pytest.raises(HadrefError, match="--attn-loss-stages"):
        Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1, attn_loss_stages=[4])
    lr3 = Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=2.0, lr_stage4=0.5, lr_stage3=1.0)
    assert [st.lr for st in lr3.stages] == [2.0, 2.0, 1.0, 0.5]   # stage 3 alone
    assert [st.lr for st in ad_12.stages] == [1, 1, 1, 1]          # unset: --lr (the paper)
    with pytest.raises(HadrefError, match="--lr-stage3 0.0"):
        Schedule(gamma=0.5, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1, lr_stage3=0.0)
    assert steps_until(4.0, 1.0, 0.5) == 2  # c = 4, 2 are > 1; c = 1 is not
    with pytest.raises(HadrefError, match="--gamma"):
        Schedule(gamma=1.0, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1)
    with pytest.raises(HadrefError, match="c_start > c_mid > c_end"):
        Schedule(gamma=0.5, c_end=2.0, stage3_steps=1, stage4_steps=1, lr=1, lr_stage4=1)


def test_checkpoint_round_trip_and_atomic(tmp_path):
    path = tmp_path / "run" / "ckpt.h5"
    arrays = {"params": {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
              "optim": {"m.a.weight": np.ones(3)}}
    meta = {"step": 7, "rng": {"state": 2 ** 100 + 3}, "c": 0.25}
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(path)
    assert got_meta == meta and np.array_equal(got["params"]["a.weight"], arrays["params"]["a.weight"])
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.h5"]  # no temporary left
    with pytest.raises(HadrefError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(HadrefError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "junk.h5")


def test_progress_line_and_json_log(tmp_path):
    out = io.StringIO()
    p = Progress(total=100, stream=out, every=0.0, label="distill ")
    p.update(10, {"stage": 2, "c": 0.5, "loss": 0.123456, "lr": 2e-5})
    text = out.getvalue()
    for piece in ("distill 10/100", "stage 2", "c 0.5", "loss 0.1235", "lr 2e-05", "step/s", "left"):
        assert piece in text
    log = JsonLog(tmp_path / "log.jsonl")
    log.write(step=1, loss=0.5)
    log.write(event="eval", accuracy=0.9)
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"event": "eval", "accuracy": 0.9}]
