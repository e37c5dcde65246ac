import pytest
from promtools import exposed_names, running, traffic


@pytest.fixture
async def exposed(tmp_path) -> set[str]:
    """Every series name the live exposition of a running orchestrator declares, and
    Prometheus's own ``up``."""
    async with running(tmp_path) as app:
        await traffic(app)
        return exposed_names(await app.scrape()) | {"up"}
