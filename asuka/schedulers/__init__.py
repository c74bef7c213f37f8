"""Schedulers."""

from .ir_sde import IRSDEScheduler, IRSDESchedulerOutput


__all__ = ["IRSDEScheduler", "IRSDESchedulerOutput"]
