"""CPU time of a started process and everything it spawned, read from /proc (Linux).

`ManagedProcess` starts each process in a session of its own, so "the router" is every process whose session id
is the router's PID: a launcher script and the server it runs, a Python wrapper and the Rust runtime it loads, all
their threads. The kernel's per-process counters include threads that already exited; children that exited and
were reaped are included through the parent's `cutime`/`cstime`. Resolution is one clock tick (usually 10 ms), so
measure over enough requests that a tick is noise.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields after the ")" that ends the command name in /proc/PID/stat: state is field 3 of the line, so field n
# is at index n - 3. Session is field 6; utime, stime, cutime, cstime are fields 14-17.
_SESSION = 6 - 3
_TIMES = slice(14 - 3, 17 - 3 + 1)


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # the process exited between listing and reading
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def session_cpu_seconds(session_id: int) -> float:
    """User + system CPU seconds used so far by the processes of the session `session_id`."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[_SESSION]) == session_id:
            ticks += sum(int(value) for value in fields[_TIMES])
    return ticks / _TICKS_PER_SECOND


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as `uptime` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"
