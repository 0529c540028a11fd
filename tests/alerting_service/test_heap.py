"""An app that owns its process freezes its start-up heap (heap.py); one among a test's many does not."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from alerting_service.api.app import create_app
from alerting_service.heap import freeze_startup_objects
from tests.alerting_service.conftest import SettingsFactory


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    """The test process's heap is never left frozen: its garbage cycles would never be collected."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_freezing_moves_the_surviving_objects_out_of_the_collected_generations() -> None:
    survivor = {"kept": ["alive"]}
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0
    assert all(survivor is not tracked for generation in range(3) for tracked in gc.get_objects(generation))


@pytest.mark.usefixtures("unfrozen_afterwards")
async def test_an_app_that_owns_its_process_freezes_its_heap_once_started(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings(), freeze_heap_once_started=True)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("unfrozen_afterwards")
async def test_an_app_by_default_leaves_the_heap_alone(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
