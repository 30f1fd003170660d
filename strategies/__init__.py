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

from ._backoff import (
    BackoffPolicy as BackoffPolicy,
    ExponentialBackoff as ExponentialBackoff,
    FixedBackoff as FixedBackoff,
    NoBackoff as NoBackoff,
)
from ._errors import HubvisorError as HubvisorError, InvalidPolicy as InvalidPolicy
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

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("strategies."):
        _obj.__module__ = "strategies"
del _name, _obj
