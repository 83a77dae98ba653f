"""A Jupyter server extension present in every Allotment session (copied into the session's
environment as ``allotment_session``; it imports nothing of Allotment).

Kernel websockets get TCP_NODELAY: jupyter-server leaves Nagle's algorithm on, so through a
proxy a small message waits for the previous one's acknowledgement (a trivial cell took
~48 ms here instead of ~9 ms).
"""

from __future__ import annotations

import inspect
import os
from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "allotment_session"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    if os.environ.get("ALLOTMENT_SESSION_NODELAY") == "0":  # off, to measure the difference
        return
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
