"""The loss-spike guard (`training.stop_on_spike`): a loss that explodes but stays finite.

The non-finite guard stops a run whose loss or gradient norm is NaN or infinite. A run can
also diverge with finite numbers: the loss jumps to hundreds of times its usual value and
stays there, and each new checkpoint would save the broken state. `SpikeGuard` keeps the
running median of the last `window` healthy losses; a loss above `factor` x that median is a
spike, kept out of the median; `steps` spikes in a row stop the run like a non-finite loss
(the newest checkpoint stays the last healthy one; no checkpoint is written during a
streak), naming the loss parts that exploded. Spikes count only once `window // 2` healthy
losses give a median, so the first steps of a stage (whose loss falls fast) never trip it.

Fed the loss averaged over the ranks, every rank takes the same decision.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class SpikeGuard:
    factor: float
    steps: int
    window: int
    streak: int = 0
    losses: deque = field(default_factory=deque)
    parts: dict[str, deque] = field(default_factory=dict)
    last: dict = field(default_factory=dict)  # the latest spike: loss, median, parts

    def median(self) -> float | None:
        if len(self.losses) < max(1, self.window // 2):
            return None
        return statistics.median(self.losses)

    def update(self, loss: float, parts: dict[str, float]) -> bool:
        """Record one step's loss (and its parts); True once `steps` spikes in a row."""
        median = self.median()
        if median is not None and median > 0 and loss > self.factor * median:
            self.streak += 1
            self.last = {"loss": loss, "median": median, "parts": self._exploded(parts)}
            return self.streak >= self.steps
        self.streak = 0
        self.losses.append(loss)
        while len(self.losses) > self.window:
            self.losses.popleft()
        for name, value in parts.items():
            history = self.parts.setdefault(name, deque(maxlen=self.window))
            history.append(value)
        return False

    def _exploded(self, parts: dict[str, float]) -> list[str]:
        """The parts furthest above their own running medians, worst first: those above
        `factor` x their median, else the single worst one."""
        ratios = {}
        for name, value in parts.items():
            history = self.parts.get(name)
            if history:
                median = statistics.median(history)
                ratios[name] = value / median if median > 0 else float("inf") if value > 0 else 0
        worst = sorted(ratios, key=ratios.get, reverse=True)
        above = [name for name in worst if ratios[name] > self.factor]
        return above or worst[:1]
