"""The LM pretraining experiment's CPU set-up."""

import os


def test_lm_pretrain_cpu_presets_use_as_many_devices_as_divide_the_batch(monkeypatch):
    from experiments import lm_pretrain

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [lm_pretrain.cpu_devices(b) for b in (12, 32, 7)] == [6, 8, 7]
