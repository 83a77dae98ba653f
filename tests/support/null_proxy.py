"""A proxy for JupyterHub that keeps routes in memory and forwards nothing.

A named fake, used only where the proxy is not under test: the tenant tests talk to the hub's
REST API directly (on ``hub_port``), so no request ever goes through a proxy. The real proxy
arrives, and is tested, with `allot up` (issue 5).
"""

from __future__ import annotations

from typing import Any

from jupyterhub.proxy import Proxy


class NullProxy(Proxy):
    should_start = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes: dict[str, dict[str, Any]] = {}

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec: str) -> None:
        self.routes.pop(routespec, None)

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return dict(self.routes)
