"""How kopf calls a running job's step, and what it logs of it."""

from __future__ import annotations

import logging

import kopf
from kopf._core.actions.loggers import LocalObjectLogger

from kompressor_operator import handlers


def test_the_step_timer_ticks_on_a_grid_so_a_fan_outs_steps_follow_each_other():
    """A sharp timer calls again at the next tick of its grid: after a 2.3 s fan-out step, 0.7 s
    later, where a plain one waits a whole interval after each step (reconcile.next_step_in says
    such a step is due at once)."""
    [timer] = [h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.id == "step"]
    assert timer.fn is handlers.step
    assert (timer.interval, timer.sharp) == (handlers.TIMER_SECONDS, True)


def _logged(messages: list[tuple[int, str]], root_level: int, caplog) -> list[str]:
    """What kopf's object logger (through the adapter kopf logs a handler's outcome with) lets out
    with the operator's filter on it, the process at `root_level`."""
    logger = logging.getLogger("kopf.objects")
    body = {"metadata": {"namespace": "shop", "name": "catalog", "uid": "u1"}}
    adapter = LocalObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings())
    root = logging.getLogger()
    before = root.level
    logger.addFilter(handlers.QUIET_STEPS)
    root.setLevel(root_level)
    caplog.clear()
    try:
        with caplog.at_level(root_level, logger="kopf.objects"):
            for level, message in messages:
                adapter.log(level, message)
    finally:
        root.setLevel(before)
        logger.removeFilter(handlers.QUIET_STEPS)
    return [record.getMessage() for record in caplog.records]


def test_a_step_that_ran_is_not_a_log_line_a_second_but_a_failing_one_is_and_debug_shows_all(caplog):
    lines = [
        (logging.INFO, "Timer 'step' succeeded."),
        (logging.ERROR, "Timer 'step' failed with an exception. Will retry."),
        (logging.INFO, "Handler 'start' succeeded."),
    ]
    assert _logged(lines, logging.INFO, caplog) == [lines[1][1], lines[2][1]]
    assert _logged(lines, logging.DEBUG, caplog) == [message for _, message in lines]
