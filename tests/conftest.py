"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below, grouped by topic."""

import pytest

from genlab.hub_server import LocalHubServer


# -- Hub (SPEC H4) -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible server on 127.0.0.1 for the whole session; ``hub_server.endpoint`` is its URL.

    Tests share it, so each should push to its own repo id.
    """
    with LocalHubServer() as server:
        yield server
