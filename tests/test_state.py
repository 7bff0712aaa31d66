"""Progress counters and TrainState: plain dataclasses that round-trip through JSON."""

from __future__ import annotations

import json

from tasktrain.state import Counts, Progress, TrainState


def test_start_finish_count_total_and_current():
    p = Progress()
    p.start()
    assert (p.total.ready, p.total.started, p.total.processed, p.total.completed) == (1, 1, 0, 0)
    p.finish()
    assert p.total == Counts(1, 1, 1, 1)
    assert p.current == Counts(1, 1, 1, 1)


def test_complete_and_reset_current():
    p = Progress()
    p.complete(3)
    p.reset_current()
    p.complete()
    assert p.total == Counts(4, 4, 4, 4)
    assert p.current == Counts(1, 1, 1, 1)


def test_reset_on_restart_rolls_back_to_completed():
    p = Progress()
    p.complete(2)
    p.start()  # interrupted before finishing
    p.reset_on_restart()
    assert p.total == Counts(2, 2, 2, 2)
    assert p.current == Counts(2, 2, 2, 2)


def test_progress_state_dict_round_trip_through_json():
    p = Progress()
    p.complete(5)
    p.reset_current()
    p.start()
    state = json.loads(json.dumps(p.state_dict()))
    assert state == {
        "total": {"ready": 6, "started": 6, "processed": 5, "completed": 5},
        "current": {"ready": 1, "started": 1, "processed": 0, "completed": 0},
    }
    q = Progress()
    q.load_state_dict(state)
    assert q == p
    assert q.state_dict() == p.state_dict()


def test_train_state_round_trip():
    s = TrainState(global_step=7, epoch=2, should_stop=True, stage="fit")
    state = json.loads(json.dumps(s.state_dict()))
    assert state == {"global_step": 7, "epoch": 2}
    t = TrainState()
    t.load_state_dict(state)
    assert (t.global_step, t.epoch) == (7, 2)
    assert t.should_stop is False and t.stage is None  # run-time flags are not state


def test_train_state_defaults():
    s = TrainState()
    assert (s.global_step, s.epoch, s.should_stop, s.stage) == (0, 0, False, None)
