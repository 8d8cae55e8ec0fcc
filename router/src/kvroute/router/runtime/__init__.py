"""Assembling and running a router process: `core` (what the front doors share), `router` (discovery, core and
doors started and stopped together), `build` (`build_router(settings)`, the one assembly path)."""

from kvroute.router.runtime.core import CoreSettings, RouterCore
from kvroute.router.runtime.router import FrontDoor, Router, serve

__all__ = ["CoreSettings", "FrontDoor", "Router", "RouterCore", "serve"]
