"""Test machinery shared by `tests/` and `e2e/`: polling, managed processes, loopback ports.

Imported as `tests.support` (the repository root is on pytest's `pythonpath`).
"""

from tests.support.polling import eventually, eventually_sync, time_until
from tests.support.ports import free_port
from tests.support.processes import Processes, ServerProcess, kvroute_command

__all__ = [
    "Processes",
    "ServerProcess",
    "eventually",
    "eventually_sync",
    "free_port",
    "kvroute_command",
    "time_until",
]
