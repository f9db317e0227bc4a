"""The loss-spike guard: a finite loss far above its running median for several steps in a
row stops the run, naming the part that exploded; healthy noise, a falling loss, and a
single spike do not."""

from __future__ import annotations

import random

from distill.core.spike_guard import SpikeGuard


def _guard() -> SpikeGuard:
    return SpikeGuard(factor=10.0, steps=3, window=20)


def _healthy(guard: SpikeGuard, n: int = 20, seed: int = 0) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        kd, mse = 1.0 + 0.2 * rng.random(), 0.5 + 0.1 * rng.random()
        assert not guard.update(kd + mse, {"logit_kl": kd, "hidden_mse": mse})


def test_a_loss_that_explodes_and_stays_up_stops_naming_the_part():
    guard = _guard()
    _healthy(guard)
    results = [guard.update(60.0 + i, {"logit_kl": 1.1, "hidden_mse": 59.0 + i}) for i in range(3)]
    assert results == [False, False, True]
    assert guard.last["parts"] == ["hidden_mse"] and 1.5 < guard.last["median"] < 1.9


def test_one_spike_then_recovery_resets_the_streak():
    guard = _guard()
    _healthy(guard)
    assert not guard.update(100.0, {"logit_kl": 99.0, "hidden_mse": 1.0})
    assert not guard.update(1.6, {"logit_kl": 1.1, "hidden_mse": 0.5})
    assert guard.streak == 0
    assert not guard.update(100.0, {"logit_kl": 99.0, "hidden_mse": 1.0})
    assert not guard.update(100.0, {"logit_kl": 99.0, "hidden_mse": 1.0})
    assert guard.update(100.0, {"logit_kl": 99.0, "hidden_mse": 1.0})
    assert guard.last["parts"] == ["logit_kl"]


def test_no_median_no_spike_the_first_steps_of_a_stage_fall_freely():
    guard = _guard()
    for loss in (500.0, 200.0, 80.0, 30.0, 12.0, 5.0, 3.0, 2.0, 1.8):  # under window // 2
        assert not guard.update(loss, {"logit_kl": loss})
    assert guard.median() is None


def test_spikes_stay_out_of_the_median():
    guard = _guard()
    _healthy(guard)
    before = guard.median()
    guard.update(1000.0, {"logit_kl": 1000.0})
    assert guard.median() == before
