"""A Jupyter server extension present in every Allotment session (copied into the session's
environment as ``allotment_session``; it imports nothing of Allotment).

- Kernel websockets get TCP_NODELAY: jupyter-server leaves Nagle's algorithm on, so a small
  message waits for the previous one's acknowledgement (a trivial cell took ~48 ms here
  instead of ~9 ms). ``ALLOTMENT_SESSION_NODELAY=0`` turns it off, to measure the difference.
- ``GET <base_url>allotment/meter``: this session's meter, asked of Allotment with the
  session's own token, for the meter in JupyterLab's status bar (the browser holds no token).
- Every minute (``ALLOTMENT_ACTIVITY_SECONDS``) it tells Allotment when the session was last
  used (browser, API or kernel activity; a busy kernel means now), for the culler.
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
    _activity(serverapp)


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


def _this_workload(endpoint: str) -> tuple[str, str] | None:
    """This session's ``workloads/{id}/<endpoint>`` URL in Allotment and the session's token,
    from the environment the spawner gave it; None outside an Allotment session."""
    service = os.environ.get("ALLOTMENT_URL", "").rstrip("/")
    workload = os.environ.get("ALLOT_WORKLOAD_ID", "")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not (service and workload.isdigit() and token):
        return None
    return f"{service}/api/workloads/{workload}/{endpoint}", token


def _meter(serverapp: Any) -> None:
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.utils import url_path_join
    from tornado import web
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    found = _this_workload("meter")
    if found is None:
        return
    url, token = found

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


def _activity(serverapp: Any) -> None:
    from datetime import UTC

    from tornado.httpclient import AsyncHTTPClient, HTTPClientError
    from tornado.ioloop import PeriodicCallback

    found = _this_workload("activity")
    if found is None:
        return
    url, token = found
    every = float(os.environ.get("ALLOTMENT_ACTIVITY_SECONDS", "60"))

    async def report() -> None:
        try:
            last = serverapp.web_app.last_activity()
            kernels = serverapp.kernel_manager.list_kernels()
            busy = any(k.get("execution_state") == "busy" for k in kernels)
        except Exception as e:  # noqa: BLE001 - a report missed is a minute of activity
            serverapp.log.warning("allotment_session: cannot tell the last activity: %s", e)
            return
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        body = json.dumps({"last_activity": last.astimezone(UTC).isoformat(), "busy": busy})
        try:
            await AsyncHTTPClient().fetch(
                url,
                method="POST",
                body=body,
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
                request_timeout=10,
            )
        except (HTTPClientError, OSError) as e:
            serverapp.log.warning("allotment_session: cannot report activity: %s", e)

    PeriodicCallback(report, every * 1000).start()
