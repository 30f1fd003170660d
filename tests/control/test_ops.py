"""The table of control operations: one entry gives the socket op and the ctl subcommand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner

from supervisor import ControlError, Hub, SupervisorSpec
from supervisor._cli import _ctl_command, ctl
from supervisor.control.client import ControlClientError, request
from supervisor.control.handlers import BUDGETS, HANDLERS, STREAMS
from supervisor.control.ops import OPS, Field, Op, parse_request
from supervisor.control.printers import PRINTERS
from supervisor.control.server import serve_control
from tests.helpers import running, sleeper

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "control.md").read_text()


def test_ctl_subcommands_are_the_table() -> None:
    """Every op the table offers to ctl is a subcommand with the op's help, and no other."""
    assert {n for n, op in OPS.items() if op.command} == set(ctl.commands)
    for name, command in ctl.commands.items():
        assert command.help is not None and command.help.startswith(OPS[name].help)


def test_docs_list_every_op() -> None:
    """docs/control.md has a row for every op."""
    documented = set(re.findall(r"^\| `(\w+)` \|", DOCS, re.M))

    assert set(OPS) == documented


@pytest.mark.parametrize(
    ("req", "fragments"),
    [
        (
            {"op": "terminate"},
            ["needs 'id'", "a string", '{"op": "terminate", "id": "worker-agent-1"}'],
        ),
        (
            {"op": "resize", "pool": "w", "size": -2},
            ["'size' must be an int >= 0", "(got -2)", '"size": 4'],
        ),
        ({"op": "resize", "pool": 7, "size": 1}, ["'pool' must be a string", "(got 7)"]),
        ({"op": "logs", "id": "a", "lines": True}, ["'lines' must be an int >= 0", "(got True)"]),
        ({"op": "logs", "id": "a", "lines": 2.5}, ["(got 2.5)"]),
        ({"op": "terminate", "id": "x" * 500}, []),  # any string: the hub says if it exists
        ({"op": "count", "id": "a"}, ["request 'count' has no field 'id'", "no other field"]),
        ({"op": "logs", "id": "a", "line": 3}, ["no field 'line'", "'id', 'lines'"]),
        ({"op": "dance"}, ["unknown op 'dance'", "list, count, logs"]),
        ({"op": "d" * 1000}, ["..."]),
        ({"id": "a"}, ["a request is a JSON object", "got a JSON object"]),
        ("list", ["a request is a JSON object", "(got 'list')"]),
    ],
)
def test_arguments_are_validated_in_one_place(req: Any, fragments: list[str]) -> None:
    """Errors name the field, the value and the fix (an example request), and stay short."""
    if not fragments:
        op, args = parse_request(req)
        assert ("terminate", {"id": "x" * 500}) == (op.name, args)
        return
    with pytest.raises(ControlError) as err:
        parse_request(req)
    message = str(err.value)

    for fragment in fragments:
        assert fragment in message
    assert len(message) < 300


async def test_one_entry_adds_an_op_to_the_socket_and_to_ctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An op added to OPS is dispatched by the socket and becomes a ctl subcommand."""

    async def echo(hub: Hub, args: Any, background: trio.Nursery) -> Any:
        return {"said": args["text"] * args.get("times", 1), "hub": hub.context.hub_id}

    op = Op(
        "echo",
        "Say TEXT back.",
        fields=(
            Field("text", str, "what to say", "hi", metavar="TEXT"),
            Field("times", int, "how often", 2, required=False, minimum=1, flag="-t"),
        ),
    )
    monkeypatch.setitem(OPS, "echo", op)
    monkeypatch.setitem(HANDLERS, "echo", echo)
    monkeypatch.setitem(PRINTERS, "echo", lambda result, args: click.echo(result["said"]))
    group = click.Group("ctl", commands=[_ctl_command(op)])
    path = tmp_path / "hub.sock"
    spec = SupervisorSpec(name="hub", children=[sleeper("solo")])
    async with running(spec) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        def invoke(*args: str) -> tuple[int, str]:
            result = CliRunner().invoke(group, list(args), obj=path)
            return result.exit_code, result.output

        assert {"said": "hi", "hub": "hub"} == await trio.to_thread.run_sync(
            request, path, {"op": "echo", "text": "hi"}
        )
        assert (0, "abab\n") == await trio.to_thread.run_sync(invoke, "echo", "ab", "-t", "2")
        code, out = await trio.to_thread.run_sync(invoke, "echo", "ab", "--times", "2", "--json")
        assert 0 == code and {"said": "abab", "hub": "hub"} == json.loads(out)
        code, out = await trio.to_thread.run_sync(invoke, "echo", "ab", "-t", "0")
        assert 2 == code and "0 is not in the range x>=1" in out
        nursery.cancel_scope.cancel()


async def test_budgets_bound_how_long_an_op_may_take() -> None:
    """terminate/restart: the child's shutdown (a supervisor's children's in sequence); resize:
    the pool template's (members stop together); children started later: the whole tree's."""
    from supervisor import BRUTAL_KILL, PoolSpec

    spec = SupervisorSpec(
        name="hub",
        children=[
            sleeper("quick", shutdown=BRUTAL_KILL),
            SupervisorSpec(
                name="team", children=[sleeper("a", shutdown=1), sleeper("b", shutdown=2)]
            ),
            PoolSpec(agent_type="w", template=sleeper("t", shutdown=4), size=2),
        ],
    )
    async with running(spec) as (hub, _):
        await hub.start_child("hub", sleeper("late", shutdown=0.5))

        def budget(req: dict[str, Any]) -> float:
            op, args = parse_request(req)
            assert op.budget is not None
            return BUDGETS[op.name](hub, args)

        assert 0.0 == budget({"op": "terminate", "id": "quick"})
        assert 3.0 == budget({"op": "restart", "id": "team"})
        assert 2.0 == budget({"op": "terminate", "id": "b"})
        assert 4.0 == budget({"op": "terminate", "id": "w-agent-2"})
        assert 4.0 == budget({"op": "resize", "pool": "w", "size": 0})
        assert 0.0 == budget({"op": "resize", "pool": "team", "size": 0})
        assert 7.0 == budget({"op": "terminate", "id": "late"})
        with pytest.raises(ControlError, match="no child 'ghost'"):
            budget({"op": "terminate", "id": "ghost"})


async def test_a_handler_that_fails_unexpectedly_is_an_error_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An op that raises anything but ControlError is answered with the error and logged."""

    async def broken(hub: Hub, args: Any, background: trio.Nursery) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setitem(OPS, "broken", Op("broken", "Fail."))
    monkeypatch.setitem(HANDLERS, "broken", broken)
    path = tmp_path / "hub.sock"
    solo = SupervisorSpec(name="hub", children=[sleeper("solo")])
    async with running(solo) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        with pytest.raises(ControlClientError, match="broken failed inside the hub: "):
            await trio.to_thread.run_sync(request, path, {"op": "broken"})
        assert 1 == len(await trio.to_thread.run_sync(request, path, {"op": "list"}))
        nursery.cancel_scope.cancel()


async def test_a_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    """AF_UNIX paths are short; a long one names the path and the fix."""
    path = tmp_path / ("x" * 120) / "hub.sock"

    with pytest.raises(ControlError, match="cannot listen on .*--control-socket PATH"):
        await serve_control(Hub(SupervisorSpec(name="hub", children=[sleeper("s")])), path)


def test_handlers_and_printers_cover_every_op() -> None:
    """Each op of the table has exactly one handler in the hub (a streaming op a stream
    handler), a budget if it declares one, and a printer on the client."""
    assert {n for n, op in OPS.items() if not op.stream} == set(HANDLERS)
    assert {n for n, op in OPS.items() if op.stream} == set(STREAMS)
    assert {n for n, op in OPS.items() if op.budget} == set(BUDGETS)
    assert set(OPS) == set(PRINTERS)


def test_the_table_imports_no_hub_and_no_rich() -> None:
    """The op table, the client and the CLI load without trio, attrs, rich, the hub, the
    runtime or the work queues (a client command starts fast)."""
    import subprocess
    import sys

    code = (
        "import sys, supervisor._cli, supervisor.control.client, supervisor.control.ops\n"
        "heavy = {'trio', 'attrs', 'rich.table', 'supervisor._hub', 'supervisor._runtime',\n"
        "         'supervisor.work', 'prometheus_client', 'redis'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()


def test_item_statuses_are_the_work_items() -> None:
    """The table's copy of the item statuses (it imports no work module) is ItemStatus."""
    from supervisor import ItemStatus
    from supervisor.control.ops import ITEM_STATUSES

    assert tuple(str(s) for s in ItemStatus) == ITEM_STATUSES
