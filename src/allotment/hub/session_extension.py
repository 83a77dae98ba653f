"""A Jupyter server extension present in every Allotment session (copied into the session's
environment as ``allotment_session``; it imports nothing of Allotment).

- Kernel websockets get TCP_NODELAY: jupyter-server leaves Nagle's algorithm on, so a small
  message waits for the previous one's acknowledgement (a trivial cell took ~48 ms here
  instead of ~9 ms). ``ALLOTMENT_SESSION_NODELAY=0`` turns it off, to measure the difference.
- ``GET <base_url>allotment/meter``: this session's meter, asked of Allotment with the
  session's own token, for the meter in JupyterLab's status bar (the browser holds no token).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "allotment_session"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    if os.environ.get("ALLOTMENT_SESSION_NODELAY") != "0":
        _nodelay(serverapp)
    _meter(serverapp)


def _nodelay(serverapp: Any) -> None:
    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

    if getattr(KernelWebsocketHandler, "_allotment_nodelay", False):
        return
    original = KernelWebsocketHandler.open

    async def open(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.set_nodelay(True)
        result = original(self, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    KernelWebsocketHandler.open = open
    KernelWebsocketHandler._allotment_nodelay = True
    serverapp.log.info("allotment_session: TCP_NODELAY on kernel websockets")


def _meter(serverapp: Any) -> None:
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.utils import url_path_join
    from tornado import web
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    service = os.environ.get("ALLOTMENT_URL", "").rstrip("/")
    workload = os.environ.get("ALLOT_WORKLOAD_ID", "")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not (service and workload.isdigit() and token):
        return
    url = f"{service}/api/workloads/{workload}/meter"

    class MeterHandler(APIHandler):  # type: ignore[misc]
        @web.authenticated
        async def get(self) -> None:
            try:
                r = await AsyncHTTPClient().fetch(
                    url, headers={"Authorization": f"token {token}"}, request_timeout=10
                )
            except HTTPClientError as e:
                self.set_status(502)
                self.finish(json.dumps({"message": f"Allotment answered {e.code}"}))
                return
            except OSError as e:
                self.set_status(502)
                self.finish(json.dumps({"message": f"Allotment is unreachable: {e}"}))
                return
            self.set_header("Content-Type", "application/json")
            self.finish(r.body)

    serverapp.web_app.add_handlers(
        ".*$", [(url_path_join(serverapp.base_url, "allotment/meter"), MeterHandler)]
    )
