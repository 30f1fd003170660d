"""The optional parts of hubvisor and the packages they need (the extras).

``pip install hubvisor`` runs a hub with work in SQLite or memory; Redis support
(``--redis``, :class:`RedisMirror`, :class:`RedisWorkQueue`) needs ``hubvisor[redis]`` and
the Prometheus endpoint (``--metrics``, :class:`MetricsService`) ``hubvisor[metrics]``.
The code of each imports its packages through :func:`require` or :func:`explain`, so a
missing one fails with the extra to install instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from typing import Final

from ._errors import ConfigError

__all__ = ["EXTRAS", "MissingExtra", "explain", "require"]

EXTRAS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "redis": ("Redis support", ("redis",)),
    "metrics": ("The Prometheus metrics endpoint", ("prometheus_client",)),
}
"""Extra name -> (what it enables, the top-level modules it installs)."""


class MissingExtra(ConfigError, ImportError):
    """A part of hubvisor was asked for without its extra installed; the message names
    the extra and the pip command. A :class:`ConfigError` (the CLI shows it as a bad
    option) and an :class:`ImportError` (it is one)."""


def _missing(extra: str, module: str, exc: ImportError) -> MissingExtra:
    feature = EXTRAS[extra][0]
    error = MissingExtra(
        f"{feature} needs the {extra} extra, which is not installed (cannot import "
        f"{module}: {exc}); install it: pip install 'hubvisor[{extra}]'"
    )
    error.name = module
    return error


def explain(extra: str, exc: ImportError) -> None:
    """Raise :class:`MissingExtra` if ``exc`` is the failed import of a module of
    ``extra``; return for any other import error (the caller re-raises it)."""
    missing = (exc.name or "").partition(".")[0]
    if missing in EXTRAS[extra][1]:
        raise _missing(extra, missing, exc) from exc


def require(extra: str) -> None:
    """Import the modules of ``extra``, or raise :class:`MissingExtra` naming it."""
    for module in EXTRAS[extra][1]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _missing(extra, module, exc) from exc
