"""The chosen configuration as files a user applies: an `EndpointPickerConfig` for `kvroute router --config`, and
a `SchedulingProfile` for the operator (its spec carries the same scheduling sections, DESIGN §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "endpoint-picker-config.yaml"
PROFILE_FILE = "schedulingprofile.yaml"
# The sections of an EndpointPickerConfig that a SchedulingProfile's spec carries.
CONFIG_SECTIONS = ("plugins", "schedulingProfiles", "saturationDetector", "metrics", "admission")


def scheduling_profile(config_text: str, *, pool: str, namespace: str) -> dict[str, Any]:
    """A SchedulingProfile for the InferencePool `pool` whose router runs `config_text`."""
    document = yaml.safe_load(config_text)
    spec: dict[str, Any] = {"poolRef": {"name": pool}}
    spec.update({key: document[key] for key in CONFIG_SECTIONS if key in document})
    return {
        "apiVersion": "kvroute.io/v1alpha1",
        "kind": "SchedulingProfile",
        "metadata": {"name": pool, "namespace": namespace},
        "spec": spec,
    }


def write_outputs(config_text: str, header: str, out: Path, *, pool: str, namespace: str) -> list[Path]:
    """Writes both files under `out`, each opened by `header` (comment lines saying where they come from)."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    config_path = out / CONFIG_FILE
    config_path.write_text(comment + config_text)
    profile_path = out / PROFILE_FILE
    manifest = scheduling_profile(config_text, pool=pool, namespace=namespace)
    profile_path.write_text(comment + yaml.safe_dump(manifest, sort_keys=False))
    return [config_path, profile_path]
