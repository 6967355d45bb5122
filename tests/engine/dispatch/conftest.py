from collections.abc import Iterator

import pytest

from featurelm.engine.testing import FaultServer


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server
