"""Child processes of the e2e control plane: started with their output in a log file, stopped by PID.

Each child gets ``PR_SET_PDEATHSIG`` so that it is killed if the test process dies without running its
teardown (a CI job cancelled with SIGKILL must not leave an etcd or an API server behind on the runner).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_SECONDS = 10.0


# Resolved in the parent: the child, between fork and exec, only makes the system call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One running binary; its combined stdout and stderr go to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with log_path.open("ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # Safe here: the hook only calls prctl(2), which takes no lock another thread could hold.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def exit_code(self) -> int | None:
        """None while the process runs."""
        return self._popen.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the process."""
        if self._popen.poll() is not None:
            return
        self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
