"""NVIDIA Dynamo's KV router (PyPI ai-dynamo) in front of the benchmark's simulators; see docs/dynamo.md.

Dynamo lives in its own venv (`make dynamo`); this package runs in the project's and starts Dynamo's processes
with that venv's interpreter. `worker.py` and `broker.py` are standalone scripts for that interpreter and are
never imported here.
"""

from kvroute.bench.live.dynamo.launch import (
    DYNAMO_VERSION,
    MODES,
    DynamoUnavailable,
    dynamo_processes,
    dynamo_python,
    dynamo_venv,
    wait_dynamo_ready,
)

__all__ = [
    "DYNAMO_VERSION",
    "MODES",
    "DynamoUnavailable",
    "dynamo_processes",
    "dynamo_python",
    "dynamo_venv",
    "wait_dynamo_ready",
]
