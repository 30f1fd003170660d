"""Restart policy objects for hubvisor supervisors.

Three independent questions, each answered by a small object behind a
``typing.Protocol``, so a user can plug in their own:

* which siblings restart: :class:`RestartStrategy` (:class:`OneForOne`,
  :class:`OneForAll`, :class:`RestForOne`);
* when they restart: :class:`BackoffPolicy` (:class:`NoBackoff`, :class:`FixedBackoff`,
  :class:`ExponentialBackoff`);
* when to give up: :class:`IntensityPolicy` (:class:`Intensity`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import HubvisorError as HubvisorError, InvalidPolicy as InvalidPolicy

if TYPE_CHECKING:
    from ._backoff import (
        BackoffPolicy as BackoffPolicy,
        ExponentialBackoff as ExponentialBackoff,
        FixedBackoff as FixedBackoff,
        NoBackoff as NoBackoff,
    )
    from ._intensity import (
        Intensity as Intensity,
        IntensityDecision as IntensityDecision,
        IntensityPolicy as IntensityPolicy,
    )
    from ._siblings import (
        OneForAll as OneForAll,
        OneForOne as OneForOne,
        RestartStrategy as RestartStrategy,
        RestForOne as RestForOne,
    )

__all__ = [
    "BackoffPolicy",
    "ExponentialBackoff",
    "FixedBackoff",
    "HubvisorError",
    "Intensity",
    "IntensityDecision",
    "IntensityPolicy",
    "InvalidPolicy",
    "NoBackoff",
    "OneForAll",
    "OneForOne",
    "RestForOne",
    "RestartStrategy",
]

_EXPORTS = {
    "BackoffPolicy": "_backoff",
    "ExponentialBackoff": "_backoff",
    "FixedBackoff": "_backoff",
    "NoBackoff": "_backoff",
    "Intensity": "_intensity",
    "IntensityDecision": "_intensity",
    "IntensityPolicy": "_intensity",
    "OneForAll": "_siblings",
    "OneForOne": "_siblings",
    "RestForOne": "_siblings",
    "RestartStrategy": "_siblings",
}
"""The names imported on first use (PEP 562): ``hubvisor status`` needs only the errors."""


def _home(obj: Any) -> None:
    if getattr(obj, "__module__", "").startswith("strategies."):
        obj.__module__ = "strategies"


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    for public, home in _EXPORTS.items():
        if home == module_name:
            obj = getattr(module, public)
            _home(obj)
            globals()[public] = obj
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_home(HubvisorError)
_home(InvalidPolicy)
