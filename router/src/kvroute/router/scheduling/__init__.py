"""The scheduling runner: one cycle of profile handler, filters, weighted scorers and picker per request."""

from kvroute.router.scheduling.scheduler import Scheduler, SchedulerMetrics, SchedulingError

__all__ = ["Scheduler", "SchedulerMetrics", "SchedulingError"]
