"""Liveness, for JupyterHub and load balancers. Says nothing about anyone."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from allotment import __version__
from allotment.api.deps import StateDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep) -> dict[str, str]:
    async with state.db.read() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}
