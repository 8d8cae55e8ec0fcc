"""The kind variant of the operator e2e scenario needs Docker, kind and pytest-kubernetes (`pip install -e
'.[kind]'`); it is collected only with KVROUTE_KIND=1, so `make test` and `pytest e2e` never pick it up."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("KVROUTE_KIND") == "1" else ["test_*.py"]
