"""Rewrites a multi-image `docker save` archive so that kind counts every image in it as already built.

Usage: python3 repack_archive.py IN.tar OUT.tar

kind v0.30.0 (pkg/build/nodeimage/internal/container/docker/archive.go) reads an archive's tags from whichever of
`manifest.json` and `repositories` comes first, and from `manifest.json` takes only the first image's tags; Docker
writes `manifest.json` first. It then compares the tags verbatim with the names it would pull, which are fully
qualified (`docker.io/kindest/...`), while Docker shortens Docker Hub names. So the output starts with a
`repositories` entry listing every image under its fully qualified name; the rest of the archive is copied as it is
(containerd's importer reads `manifest.json` and qualifies the names itself).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile


def qualified(name: str) -> str:
    """A Docker reference with its registry: `kindest/x` -> `docker.io/kindest/x`, `x` -> `docker.io/library/x`."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def repositories(manifest: list[dict[str, object]]) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for entry in manifest:
        image_id = str(entry["Config"]).removesuffix(".json").removeprefix("blobs/sha256/")
        for repo_tag in entry.get("RepoTags") or []:  # type: ignore[attr-defined]
            repository, _, tag = str(repo_tag).rpartition(":")
            result.setdefault(qualified(repository), {})[tag] = image_id
    return result


def main(source: str, target: str) -> None:
    with tarfile.open(source) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None, f"{source} has no manifest.json"
        manifest = json.load(member)
        data = json.dumps(repositories(manifest)).encode()
        with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as output:
            info = tarfile.TarInfo("repositories")
            info.size, info.mode = len(data), 0o644
            output.addfile(info, io.BytesIO(data))
            for entry in archive:
                if entry.name != "repositories":
                    output.addfile(entry, archive.extractfile(entry) if entry.isfile() else None)


if __name__ == "__main__":
    main(*sys.argv[1:])
