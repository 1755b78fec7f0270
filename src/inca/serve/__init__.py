"""``inca serve``: many tasks behind one HTTP endpoint, one backbone pass per micro-batch."""

from inca.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201  (FastAPI imported on use)
    from inca.serve.app import create_app as make

    return make(*args, **kwargs)
