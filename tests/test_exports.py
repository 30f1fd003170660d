"""The public surface of `supervisor` and `strategies`: every public name exported,
documented, and shown under the package's name."""

from __future__ import annotations

import importlib
import inspect

import pytest

import strategies
import supervisor

# Modules whose public names are part of `supervisor`'s API.
_SUPERVISOR_MODULES = [
    "_aclient",
    "_client",
    "_errors",
    "_events",
    "_hub",
    "_keeper",
    "_limits",
    "_process",
    "_registry_redis",
    "_registry",
    "_runtime",
    "_scale",
    "_spec",
]
_INTERNAL = {"agent_ids"}  # in a module's __all__ for the package's own use


@pytest.mark.parametrize(
    ("package", "modules"),
    [
        (supervisor, _SUPERVISOR_MODULES),
        (strategies, ["_backoff", "_intensity", "_siblings"]),
    ],
    ids=["supervisor", "strategies"],
)
def test_every_public_name_is_exported_and_documented(package: object, modules: list[str]) -> None:
    name = package.__name__  # type: ignore[attr-defined]
    exported = package.__all__  # type: ignore[attr-defined]
    assert len(set(exported)) == len(exported)
    for module_name in modules:
        module = importlib.import_module(f"{name}.{module_name}")
        for public in getattr(module, "__all__", []):
            if public not in _INTERNAL:
                assert public in exported, f"{name}.{module_name}.{public} is not exported"
    for public in exported:
        obj = getattr(package, public)
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name}.{public} has no docstring"
            # The hierarchy's root lives in the lower layer, strategies.
            home = {name, "strategies"}
            assert obj.__module__ in home, f"{name}.{public} shows as {obj.__module__}"


def test_errors_share_one_base() -> None:
    """Every exception class hubvisor exports derives from HubvisorError."""
    for public in supervisor.__all__:
        obj = getattr(supervisor, public)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, supervisor.HubvisorError), public
