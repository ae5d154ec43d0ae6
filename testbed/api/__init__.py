"""``testbed serve``: the HTTP API, the live WebSocket feed and the dashboard page."""

from testbed.api.app import create_app

__all__ = ["create_app"]
