"""Until app.py registers apss.web's handlers, the browser tests add them to the app that
apss.app.create_app builds. Delete this module once app.py lists `*WEB_HANDLERS`."""

from __future__ import annotations

from litestar import Litestar

from apss.web import WEB_HANDLERS
from tests.conftest import RunningServer

__all__ = ["WebServer", "add_web_routes"]


def add_web_routes(app: Litestar) -> None:
    """Register every apss.web handler whose (path, method) the app does not serve yet."""
    served = {(route.path, method) for route in app.routes for method in getattr(route, "methods", ())}
    for handler in WEB_HANDLERS:
        wanted = {(path, method) for path in handler.paths for method in handler.http_methods}
        normalised = {(path.replace(":str}", "}"), method) for path, method in wanted}
        if not (wanted <= served or normalised <= served):
            app.register(handler)


class WebServer(RunningServer):
    """tests.conftest.RunningServer with the web routes added before it starts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        add_web_routes(self.app)
