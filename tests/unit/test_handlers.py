"""How kopf calls a running job's step."""

from __future__ import annotations

import kopf

from kompressor_operator import handlers


def test_the_step_timer_ticks_on_a_grid_so_a_fan_outs_steps_follow_each_other():
    """A sharp timer calls again at the next tick of its grid: after a 2.3 s fan-out step, 0.7 s
    later, where a plain one waits a whole interval after each step (reconcile.next_step_in says
    such a step is due at once)."""
    [timer] = [h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.id == "step"]
    assert timer.fn is handlers.step
    assert (timer.interval, timer.sharp) == (handlers.TIMER_SECONDS, True)
