"""The dashboard the gateway serves at /dashboard, behind the admin key: the traffic and its
savings, options and models, the decisions and each one's detail, and the backends' health.
``_session`` signs a browser in, ``_pages`` serves the pages from the decision log; templates,
styles and the chart library (uPlot, MIT) ship in the package, so nothing loads from a network."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ._pages import PREFIX, SignInFirst, pages, router, to_sign_in

__all__ = ["PREFIX", "install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard's pages and its static files from ``app``."""
    app.include_router(router)
    app.include_router(pages)
    app.add_exception_handler(SignInFirst, to_sign_in)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=Path(__file__).parent / "static"), name="dashboard-static")
