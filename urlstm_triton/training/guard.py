"""The non-finite guard: catch a NaN/inf loss or gradient norm at the step it happens, then skip or stop.

``policy="skip"`` drops that step's update (no optimiser or scheduler step), counts it and stops the run with
``NonFiniteError`` once more than ``max_skips`` steps were skipped; ``policy="stop"`` raises at once. The message
names the step, what was non-finite and the last good checkpoint to resume from. With a loss scaler (fp16 on a
GPU) an infinite gradient norm is the scaler's business (it skips the step and lowers the scale), so only the
loss is guarded there.
"""
from __future__ import annotations

import math
from typing import Optional

from ..errors import NonFiniteError


class NonFiniteGuard:
    def __init__(self, policy: str, max_skips: int, check_grad_norm: bool = True):
        if policy not in ("skip", "stop"):
            raise ValueError(f"nonfinite policy must be 'skip' or 'stop', got {policy!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.check_grad_norm = check_grad_norm
        self.skipped = 0

    def check(self, step: int, loss: float, grad_norm: float, last_checkpoint: Optional[str]) -> bool:
        """True if the step is fine, False if it must be skipped; raises NonFiniteError to stop."""
        what = []
        if not math.isfinite(loss):
            what.append(f"loss = {loss}")
        if self.check_grad_norm and not math.isfinite(grad_norm):
            what.append(f"gradient norm = {grad_norm}")
        if not what:
            return True
        where = (f"last good checkpoint: {last_checkpoint} (resume with --resume)" if last_checkpoint
                 else "no checkpoint was written yet")
        if self.policy == "stop":
            raise NonFiniteError(f"non-finite {' and '.join(what)} at step {step} (train.nonfinite=stop); {where}")
        self.skipped += 1
        if self.skipped > self.max_skips:
            raise NonFiniteError(
                f"non-finite {' and '.join(what)} at step {step}: {self.skipped} steps skipped, more than "
                f"train.max_nonfinite_skips={self.max_skips}; {where}")
        return False

    def state_dict(self):
        return {"skipped": self.skipped}

    def load_state_dict(self, sd) -> None:
        self.skipped = int(sd["skipped"])
