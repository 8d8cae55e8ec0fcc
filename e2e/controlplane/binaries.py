"""Locating the e2e control plane's binaries: ``build.sh`` builds them once per pinned set of versions."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build.sh")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or did not become ready."""


def build_binaries() -> Path:
    """Runs ``build.sh`` (a stamp check once the pinned versions are cached) and returns the bin directory.

    The script's progress is copied to ``sys.stderr`` as it comes (a first build takes tens of minutes) and its
    last lines are kept for the error message.
    """
    if shutil.which("go") is None:
        raise ControlPlaneError("no Go toolchain on PATH: it is needed to build the e2e control plane")
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(
        [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    ) as build:
        assert build.stdout is not None and build.stderr is not None
        for line in build.stderr:
            sys.stderr.write(line)
            tail.append(line)
        output = build.stdout.read()
    if build.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {build.returncode}:\n{''.join(tail)}")
    bin_dir = Path(output.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise ControlPlaneError(f"{BUILD_SCRIPT} did not produce {', '.join(missing)} in {bin_dir}")
    return bin_dir


def pinned_versions() -> dict[str, str]:
    """The versions pinned in ``build.sh``, e.g. ``{"KUBERNETES_VERSION": "v1.35.8", ...}``."""
    return dict(re.findall(r"^([A-Z]+_VERSION)=(\S+)$", BUILD_SCRIPT.read_text(), re.MULTILINE))
