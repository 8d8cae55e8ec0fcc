"""kvroute's recommended configuration, shipped as YAML next to this module.

The router's built-in default stays GIE's (`defaults.DEFAULT_CONFIG_TEXT`); the recommended configuration is
what kvroute's routing-quality benchmark shows winning (docs/benchmarks.md has the numbers and the command that
reproduces them). `recommended-pd.yaml` is the same scoring for a prefill/decode-disaggregated pool.
"""

from __future__ import annotations

from importlib.resources import files

RECOMMENDED_FILE = "recommended.yaml"
RECOMMENDED_PD_FILE = "recommended-pd.yaml"


def recommended_config_text(*, disaggregated: bool = False) -> str:
    """The recommended `EndpointPickerConfig` document (for a P/D pool when `disaggregated`)."""
    name = RECOMMENDED_PD_FILE if disaggregated else RECOMMENDED_FILE
    return files("kvroute.router.config").joinpath(name).read_text()
