"""One worker of a router pod (`kvroute router --workers N`, see `supervisor`) and how it reaches its siblings.

The N workers of a pod are N router processes. They share each front door's listening port (`SO_REUSEPORT`: the
kernel spreads new connections over them) and act as one router:

- **Routing state**: the workers are a fleet (`kvroute.router.fleet`): worker i publishes its decisions on the
  Unix socket `fleet-i.sock` of the pod's worker directory and subscribes to every sibling's, with the same
  guarantees as between pods. When the pod also syncs with other pods, worker i publishes on `--fleet-port` + i as
  well, and subscribes to every worker of every peer pod (`fleet.peers.WorkerPeers`).
- **Metrics**: every worker answers a scrape of the pod's metrics page with the merge of all the workers' pages
  (`observability.merge`), asking its siblings over their control sockets (`worker-i.sock`, `Siblings`). A
  sibling that does not answer within `SIBLING_TIMEOUT` is left out (`kvroute_router_workers` shows it).
- **Configuration**: each worker watches the configuration (file or ConfigMap) itself; `POST /admin/reload`,
  served by worker 0 only, reloads worker 0 and then every sibling with the same document.

Worker-local, by design: each worker scrapes the model servers' metrics and keeps its own connections and
flow-control queue; the endpoints' circuit breakers are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.observability import RouterMetrics
from kvroute.router.observability.merge import merge_pages

log = logging.getLogger(__name__)

SIBLING_TIMEOUT = 2.0  # seconds a sibling has to answer for its metrics or a reload


@dataclass(frozen=True)
class WorkerPlan:
    """Worker `index` of `count`, whose sockets live in `directory` (shared by the pod's workers)."""

    index: int
    count: int
    directory: str

    def control_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    def fleet_path(self, index: int) -> str:
        return os.path.join(self.directory, f"fleet-{index}.sock")

    @property
    def siblings(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.count) if i != self.index)


class Siblings:
    """This worker's control socket (its own metrics page, `POST /reload`) and the way to its siblings'."""

    def __init__(self, plan: WorkerPlan, holder: ConfigHolder, metrics: RouterMetrics) -> None:
        self.plan = plan
        self.holder = holder
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/metrics", self._own_metrics)
        app.router.add_post("/reload", self._reload)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        path = self.plan.control_path(self.plan.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's predecessor
        await web.UnixSite(runner, path).start()
        self._runner = runner
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)
        for i in self.plan.siblings:
            connector = aiohttp.UnixConnector(self.plan.control_path(i))
            self._sessions[i] = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self.metrics.gather = self.metrics_page

    async def stop(self) -> None:
        self.metrics.gather = None
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics_page(self) -> bytes:
        """The merge of this worker's metrics page and every sibling's that answers in time."""
        answers = await asyncio.gather(*(self._sibling_metrics(i) for i in self._sessions))
        pages = [self.metrics.render(), *(page for page in answers if page is not None)]
        return await asyncio.to_thread(merge_pages, pages)

    async def reload_siblings(self, text: str) -> list[str]:
        """Reloads every sibling with `text`; what went wrong, one line per sibling that did not reload."""
        answers = await asyncio.gather(*(self._sibling_reload(i, text) for i in self._sessions))
        return [problem for problem in answers if problem is not None]

    async def _sibling_metrics(self, index: int) -> bytes | None:
        try:
            async with self._sessions[index].get("http://worker/metrics") as response:
                if response.status == 200:
                    return await response.read()
                log.warning("worker %d answered its metrics with %d", index, response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("worker %d did not answer for its metrics: %s", index, exc or type(exc).__name__)
        return None

    async def _sibling_reload(self, index: int, text: str) -> str | None:
        try:
            async with self._sessions[index].post("http://worker/reload", data=text.encode()) as response:
                if response.status == 200:
                    return None
                return f"worker {index}: {(await response.text())[:500]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"worker {index}: unreachable ({exc or type(exc).__name__})"

    async def _own_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render())

    async def _reload(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            await self.holder.reload(text)
        except ConfigError as exc:
            return web.json_response({"errors": list(exc.errors)}, status=400)
        log.info("configuration reloaded on worker 0's request")
        return web.json_response({"status": "reloaded"})
