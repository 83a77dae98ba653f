"""The API's backends: a process without the controller (a worker of ``allot serve
--workers N``) builds its own from the registry for the policy in force, to read output
through them; one given backends by ``create_app`` uses those."""

from __future__ import annotations

from pathlib import Path

from allotment.api.app import Settings, create_app
from allotment.backends.fake import FakeBackend
from allotment.backends.local.backend import LocalBackend
from allotment.clock import FakeClock
from allotment.config import load_policy
from allotment.db.policy_sync import apply_policy
from tests.support.service import ROOT, Service


async def test_without_the_controller_the_policys_backends_are_built_once_per_version(
    service: Service,
) -> None:
    state = service.app.state.allotment
    assert state.controller is None
    local = await state.backend("local")
    assert isinstance(local, LocalBackend)
    assert await state.backend("local") is local
    # department.yaml's gpu pool is Slurm's, which this service does not run.
    assert await state.backend("slurm") is None
    # A policy applied since (a pool's backend may have come or gone): built again for it.
    async with state.db.write() as session:
        policy = load_policy(ROOT / "examples/one-box.yaml", environ={})
        await apply_policy(session, policy, actor="test", now=state.clock.now())
    again = await state.backend("local")
    assert isinstance(again, LocalBackend) and again is not local
    assert await state.backend("local") is again


async def test_backends_given_to_create_app_are_the_ones_used(tmp_path: Path) -> None:
    fake = FakeBackend()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'allotment.sqlite'}",
        data_dir=tmp_path / "data",
        policy=load_policy(ROOT / "examples/department.yaml", environ={}),
    )
    app = create_app(settings, clock=FakeClock(), backends={"local": fake})
    async with app.router.lifespan_context(app):
        assert await app.state.allotment.backend("local") is fake
        assert await app.state.allotment.backend("slurm") is None
