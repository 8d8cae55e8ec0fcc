"""The admin server of the in-process proxy, on its own port: reloads, what it refuses, and the event loop kept
free while a large configuration is parsed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from kvroute.router.proxy.admin import AdminSettings

from .conftest import ProxyServer

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
    parameters: {client_header: x-served-by}
  - type: queue-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""

Fakes = Callable[..., Awaitable[Any]]
Proxies = Callable[..., Awaitable[ProxyServer]]

NO_LIMIT = AdminSettings(port=0, min_reload_interval=0)


def reloads(proxy: ProxyServer, result: str) -> float:
    return proxy.metrics.registry.get_sample_value("kvroute_config_reloads_total", {"result": result}) or 0.0


async def post(url: str, **options: Any) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as client, client.post(url, **options) as response:
        return response.status, await response.json(), response.headers


async def test_reload_applies_a_valid_file_and_rejects_an_invalid_one(
    fakes: Fakes, proxies: Proxies, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint], CONFIG, config_path=str(config), watch_interval=0, admin=NO_LIMIT)
    without_file = await proxies([fake.endpoint], CONFIG, admin=NO_LIMIT)
    first = proxy.holder.current

    config.write_text(CONFIG.replace("maxNumOfEndpoints: 2", "maxNumOfEndpoints: 1"))
    ok = await post(f"{proxy.admin_url}/admin/reload")
    second = proxy.holder.current
    config.write_text(CONFIG.replace("pluginRef: queue-scorer", "pluginRef: missing-scorer"))
    rejected = await post(f"{proxy.admin_url}/admin/reload")
    no_file = await post(f"{without_file.admin_url}/admin/reload")
    on_api_port = await post(f"{proxy.base_url}/admin/reload")

    assert ok[:2] == (
        200,
        {
            "status": "reloaded",
            "plugins": [
                "recording-hook",
                "queue-scorer",
                "max-score-picker",
                "single-profile-handler",
                "utilization-detector",
            ],
            "profiles": ["default"],
        },
    )
    assert second is not first
    assert (rejected[0], rejected[1]["error"]["code"]) == (400, "invalid_config")
    assert rejected[1]["error"]["details"] == [
        'schedulingProfiles[0].plugins[0].pluginRef: unknown plugin "missing-scorer"'
    ]
    assert proxy.holder.current is second
    assert (no_file[0], no_file[1]["error"]["code"]) == (400, "no_config_file")
    assert (on_api_port[0], on_api_port[1]["error"]["code"]) == (404, "not_found")
    assert (reloads(proxy, "success"), reloads(proxy, "failure")) == (1, 1)


async def test_browser_and_form_posts_are_refused(fakes: Fakes, proxies: Proxies, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint], CONFIG, config_path=str(config), watch_interval=0, admin=NO_LIMIT)
    url = f"{proxy.admin_url}/admin/reload"

    cross_origin = await post(url, headers={"Origin": "http://evil.example"})
    fetched = await post(url, headers={"Sec-Fetch-Site": "cross-site"})
    form = await post(url, data={"a": "b"})
    text = await post(url, data=b"x", headers={"Content-Type": "text/plain"})
    json_ok = await post(url, json={})

    assert (cross_origin[0], cross_origin[1]["error"]["code"]) == (403, "browser_request")
    assert (fetched[0], fetched[1]["error"]["code"]) == (403, "browser_request")
    assert (form[0], form[1]["error"]["code"]) == (415, "unsupported_media_type")
    assert (text[0], text[1]["error"]["code"]) == (415, "unsupported_media_type")
    assert json_ok[0] == 200
    assert reloads(proxy, "success") == 1  # only the last one reloaded


async def test_reloads_are_rate_limited(fakes: Fakes, proxies: Proxies, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    fake = await fakes("pod")
    admin = AdminSettings(port=0, min_reload_interval=30)
    proxy = await proxies([fake.endpoint], CONFIG, config_path=str(config), watch_interval=0, admin=admin)
    url = f"{proxy.admin_url}/admin/reload"

    answers = [await post(url) for _ in range(20)]

    assert answers[0][0] == 200
    assert {(status, body["error"]["code"]) for status, body, _ in answers[1:]} == {(429, "reload_rate_limited")}
    assert 25 <= int(answers[-1][2]["Retry-After"]) <= 30
    assert reloads(proxy, "success") == 1


async def test_oversized_and_deeply_nested_files_get_clear_client_errors(
    fakes: Fakes, proxies: Proxies, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    fake = await fakes("pod")
    admin = AdminSettings(port=0, min_reload_interval=0, max_config_bytes=64 * 1024)
    proxy = await proxies([fake.endpoint], CONFIG, config_path=str(config), watch_interval=0, admin=admin)
    url = f"{proxy.admin_url}/admin/reload"
    serving = proxy.holder.current

    config.write_text(CONFIG + "# padding\n" * 10_000)
    too_large = await post(url)
    config.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    too_deep = await post(url)

    assert (too_large[0], too_large[1]["error"]["code"]) == (413, "config_too_large")
    assert "larger than the 65536-byte limit" in too_large[1]["error"]["message"]
    assert (too_deep[0], too_deep[1]["error"]["code"]) == (400, "invalid_config")
    assert too_deep[1]["error"]["details"] == ["invalid YAML: the document is nested too deeply"]
    assert proxy.holder.current is serving


async def test_a_large_document_is_parsed_off_the_event_loop(fakes: Fakes, proxies: Proxies, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    fake = await fakes("pod")
    admin = AdminSettings(port=0, min_reload_interval=0, max_config_bytes=64 * 1024 * 1024)
    proxy = await proxies([fake.endpoint], CONFIG, config_path=str(config), watch_interval=0, admin=admin)
    # About 140 KB of YAML: a second or more of parsing, rejected at the end (an unknown section).
    config.write_text(CONFIG + "junk:\n" + "".join(f"  - {{k: {i}, v: [a, b, c]}}\n" for i in range(5_000)))
    gaps: list[float] = []
    reloading = True

    async def probe() -> None:
        async with aiohttp.ClientSession() as client:
            deadline = time.monotonic() + 60
            while reloading and time.monotonic() < deadline:
                started = time.monotonic()
                async with client.get(f"{proxy.base_url}/healthz") as response:
                    assert response.status == 200
                gaps.append(time.monotonic() - started)
                await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe())
    started = time.monotonic()
    status, body, _ = await post(f"{proxy.admin_url}/admin/reload", timeout=aiohttp.ClientTimeout(total=60))
    took = time.monotonic() - started
    reloading = False
    await prober

    assert status in (200, 400), body
    assert took > 0.5, "the document parsed too fast to show anything"
    assert len(gaps) > 10
    # The parse shares the GIL with the event loop, and a garbage collection of its node graph may pause both;
    # on the loop, the whole parse would hold every request for all of `took`.
    assert max(gaps) < took / 3, f"/healthz took up to {max(gaps):.3f}s while the reload took {took:.1f}s"
    assert sorted(gaps)[len(gaps) // 2] < 0.05
