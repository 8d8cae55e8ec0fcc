"""What every front door of one router process shares: configuration, endpoint pool, metrics scraper, Director.

`RouterCore` is assembled once per process (`build.build_router`); the front doors (the OpenAI proxy, the Envoy
ext_proc server) are built on its Director and only translate their protocol into Director calls. With `kvroute
router --mode both` the two front doors share one core, so a request's prefix affinity and in-flight accounting
do not depend on which door it came through.

The configuration comes from `config_text` (the built-in default when None); with `config_path` the file is also
watched. The scraper's settings (`metrics` section, `scrape_interval` overriding its interval, and the saturation
detector's `max_metrics_age` bounding how slowly idle endpoints are polled) are read once at start: a reload that
changes them takes effect at the next start. The scraper runs on a thread of its own; the Director hints it of
every scheduled request (`scrape_soon`).

With `CoreSettings.fleet`, the core also runs fleet sync (`kvroute.router.fleet`): the Director reports its
decisions to the peer replicas of the pool and the transport applies theirs, from `start()` to `stop()`.

Plugins in service: while started, the core subscribes to the KV events of the configuration's
`KVEventsConsumer`s (`datalayer.kvevents.KVEventsService`, following every reload: a consumer carried over keeps
its subscription), and closes each `Preparer` once it leaves service (a reload that dropped it, or `stop`). A
KV events address that cannot be bound fails `start`; on a reload it is logged, the new configuration serving
without those events.

Readiness, for every door's health answer, is the Director's (`Director.not_ready_reason`): a configuration is
always loaded once the core exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass

import zmq

from kvroute.router.config.builder import LoadedConfig, Registry
from kvroute.router.config.reload import MAX_CONFIG_BYTES, ConfigHolder
from kvroute.router.datalayer.kvevents import KVEventsService
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.datalayer.scraper import MetricsScraper
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.fleet.transport import FleetSettings, FleetTransport
from kvroute.router.framework import Endpoint, KVEventsConsumer, Preparer
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES, Director
from kvroute.router.requestcontrol.endpoints import forget_removed_endpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    config_path: str | None = None
    scrape_interval: float | None = None  # None: the configuration's metrics.scrapeInterval
    watch_interval: float = 1.0  # seconds between checks of config_path; 0 disables watching
    fleet: FleetSettings | None = None  # fleet sync with the pool's other router replicas; None: off
    breaker: BreakerSettings | None = None  # the endpoints' circuit breakers; None: the defaults
    max_config_bytes: int = MAX_CONFIG_BYTES  # a larger config_path is not read (the watch logs it)


class RouterCore:
    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        registry: Registry,
        settings: CoreSettings | None = None,
        *,
        config_text: str | None = None,
    ) -> None:
        """Raises `ConfigError` for a rejected configuration, `ValueError` for inconsistent settings."""
        self.settings = settings or CoreSettings()
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(registry, config_text, metrics=self.metrics)
        self.pool = EndpointPool(endpoints)
        self.fleet: FleetSync | None = None
        self.fleet_transport: FleetTransport | None = None
        fleet = self.settings.fleet
        if fleet is not None:
            holder = self.holder
            self.fleet = FleetSync(
                fleet.replica_id, lambda: holder.current, self.pool.by_id, peer_timeout=fleet.peer_timeout
            )
            self.fleet_transport = FleetTransport(self.fleet, fleet)
            self.metrics.register_fleet(self.fleet_transport.stats)
        spec = self.holder.current.metrics
        self.scraper = MetricsScraper(
            self.pool,
            interval=self.settings.scrape_interval or spec.scrape_interval,
            timeout=spec.timeout,
            staleness=spec.staleness_threshold,
            default_engine=spec.engine,
            max_age=self.holder.current.max_metrics_age,
        )
        self.director = Director(
            self.holder,
            self.pool,
            self.metrics,
            max_body_bytes=self.settings.max_body_bytes,
            breaker=self.settings.breaker,
            fleet=self.fleet,
            routed=self.scraper.scrape_soon,
        )
        forget_removed_endpoints(self.pool, self.holder, self.metrics)
        self._watch: asyncio.Task[None] | None = None
        self.kv_events = KVEventsService(self.pool, self.metrics)
        self._in_service = self.holder.current  # the configuration whose plugins are in service
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self.holder.subscribe(self._on_reload)

    async def start(self) -> None:
        await self.scraper.start()
        try:
            await self.kv_events.apply(self._in_service.kv_events_consumers)
        except BaseException:
            await self.kv_events.stop()
            await self.scraper.stop()
            raise
        if self.fleet_transport is not None:
            try:
                await self.fleet_transport.start()
            except BaseException:
                await self.kv_events.stop()
                await self.scraper.stop()
                raise
        self._started = True
        settings = self.settings
        if settings.config_path is not None and settings.watch_interval > 0:
            self._watch = asyncio.get_running_loop().create_task(
                self.holder.watch_file(settings.config_path, settings.watch_interval, settings.max_config_bytes),
                name="kvroute-config-watch",
            )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self.fleet_transport is not None:
            await self.fleet_transport.stop()
        self._started = False
        for task in list(self._background):
            await task
        await self.kv_events.stop()
        for preparer in self._in_service.preparers:
            await _close(preparer)
        await self.scraper.stop()

    def _on_reload(self, config: LoadedConfig) -> None:
        previous, self._in_service = self._in_service, config
        if not self._started:
            return
        self._in_background(self._subscribe(config.kv_events_consumers))
        for preparer in previous.preparers:
            if preparer not in config.preparers:
                self._in_background(_close(preparer))

    def _in_background(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _subscribe(self, consumers: Sequence[KVEventsConsumer]) -> None:
        try:
            await self.kv_events.apply(consumers)
        except zmq.ZMQError as exc:
            log.error("cannot subscribe to the KV events of the new configuration: %s", exc)


async def _close(preparer: Preparer) -> None:
    try:
        await preparer.close()
    except Exception:
        log.exception("closing preparer %r failed", preparer.name)
