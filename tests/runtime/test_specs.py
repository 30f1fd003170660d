"""Specs reject bad values at construction, naming the field, the value and the fix."""

from __future__ import annotations

import signal

import pytest

from strategies import FixedBackoff, Intensity, OneForAll
from supervisor import (
    BRUTAL_KILL,
    ChildSpec,
    Hub,
    InvalidChildSpec,
    InvalidPoolSpec,
    InvalidSupervisorSpec,
    MaxAgentsExceeded,
    OutputSpec,
    PoolSpec,
    RestartType,
    SupervisorSpec,
    check_specs,
)


def c(cid: str = "a", **kw: object) -> ChildSpec:
    kw.setdefault("argv", ["sleep", "1"])
    return ChildSpec(id=cid, **kw)  # type: ignore[arg-type]


class TestChildSpec:
    def test_defaults(self) -> None:
        """A minimal child spec gets OTP-like defaults."""
        spec = c()

        assert ("sleep", "1") == spec.argv
        assert RestartType.PERMANENT is spec.restart
        assert 5.0 == spec.shutdown
        assert signal.SIGTERM is spec.stop_signal

    def test_converts_names(self) -> None:
        """Restart types and signals may be given by name."""
        spec = c(restart="transient", stop_signal="int", shutdown=BRUTAL_KILL)

        assert RestartType.TRANSIENT is spec.restart
        assert signal.SIGINT is spec.stop_signal
        assert BRUTAL_KILL == spec.shutdown

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"argv": "python -m agents.worker"}, "never a shell string"),
            ({"argv": []}, "argv is empty"),
            ({"argv": ["ok", 3]}, "argv[1]"),
            ({"argv": [""]}, "argv[0] is empty"),
            ({"argv": 42}, "list of strings"),
            ({"shutdown": -1}, "shutdown must be a finite number"),
            ({"shutdown": float("nan")}, "shutdown"),
            ({"start_period": -0.5}, "start_period"),
            ({"restart": "sometimes"}, "'permanent', 'transient', 'temporary'"),
            ({"stop_signal": "SIGNOPE"}, "stop_signal"),
            ({"env": {"A": 1}}, "env['A']"),
            ({"env": {"A=B": "x"}}, "not a valid variable name"),
            ({"env": ["A"]}, "mapping"),
            ({"heartbeat_timeout": 0}, "heartbeat_timeout"),
            ({"agent_type": "bad type"}, "agent_type"),
            ({"output": "loud"}, "OutputSpec"),
            ({"cwd": ""}, "cwd"),
        ],
    )
    def test_rejects(self, kwargs: dict[str, object], fragment: str) -> None:
        """Each bad field raises InvalidChildSpec naming it."""
        with pytest.raises(InvalidChildSpec) as info:
            c(**kwargs)

        assert fragment in str(info.value)

    def test_bad_id(self) -> None:
        """Ids are short names without spaces or slashes."""
        for bad in ["", "a b", "a/b", "-x", "x" * 200, 7]:
            with pytest.raises(InvalidChildSpec, match="id"):
                c(bad)  # type: ignore[arg-type]

    def test_shell_string_hint(self) -> None:
        """A shell string gets the list it should have been."""
        with pytest.raises(InvalidChildSpec) as info:
            c(argv="sleep 10")

        assert "['sleep', '10']" in str(info.value)

    def test_output_spec(self) -> None:
        """OutputSpec bounds are checked."""
        with pytest.raises(InvalidChildSpec, match="ring_lines"):
            OutputSpec(ring_lines=-1)
        with pytest.raises(InvalidChildSpec, match="max_line_bytes"):
            OutputSpec(max_line_bytes=10)

    def test_equality_and_hash(self) -> None:
        """Specs compare by value, env included, and can be hashed."""
        assert c(env={"A": "1"}) == c(env={"A": "1"})
        assert c(env={"A": "1"}) != c(env={"A": "2"})
        assert hash(c(env={"A": "1"})) == hash(c(env={"A": "2"}))


class TestSupervisorSpec:
    def test_duplicate_ids(self) -> None:
        """Two siblings with one id are refused."""
        with pytest.raises(InvalidSupervisorSpec, match="duplicate child id 'a'"):
            SupervisorSpec(name="s", children=[c("a"), c("a")])

    def test_children_must_be_specs(self) -> None:
        """Children are specs, in a list."""
        with pytest.raises(InvalidSupervisorSpec, match="wrap a single child"):
            SupervisorSpec(name="s", children=c("a"))  # type: ignore[arg-type]
        with pytest.raises(InvalidSupervisorSpec, match="must be ChildSpec"):
            SupervisorSpec(name="s", children=["a"])  # type: ignore[list-item]

    def test_policies_checked(self) -> None:
        """Policy fields must implement their protocols."""
        with pytest.raises(InvalidSupervisorSpec, match="strategies.RestartStrategy"):
            SupervisorSpec(name="s", children=[], strategy="one_for_one")  # type: ignore[arg-type]
        with pytest.raises(InvalidSupervisorSpec, match="IntensityPolicy"):
            SupervisorSpec(name="s", children=[], intensity=(3, 5))  # type: ignore[arg-type]
        with pytest.raises(InvalidSupervisorSpec, match="BackoffPolicy"):
            SupervisorSpec(name="s", children=[], backoff=1.0)  # type: ignore[arg-type]

    def test_tree_wide_ids(self) -> None:
        """check_specs refuses an id used twice anywhere in the tree."""
        tree = SupervisorSpec(
            name="root",
            children=[
                SupervisorSpec(name="x", children=[c("a")]),
                SupervisorSpec(name="y", children=[c("a")]),
            ],
        )
        with pytest.raises(InvalidSupervisorSpec, match="appears twice"):
            check_specs(tree)
        with pytest.raises(InvalidSupervisorSpec):
            Hub(tree)

    def test_pool_ids_reserved(self) -> None:
        """A child may not take an id a pool could give a member when it grows."""
        tree = SupervisorSpec(
            name="root",
            children=[PoolSpec(agent_type="w", template=c(), size=1, max_size=3), c("w-agent-3")],
        )
        with pytest.raises(InvalidSupervisorSpec, match="w-agent-3"):
            check_specs(tree)

    def test_nested_ok(self) -> None:
        """A valid nested tree passes."""
        check_specs(
            SupervisorSpec(
                name="root",
                strategy=OneForAll(),
                intensity=Intensity(1, 1),
                backoff=FixedBackoff(1),
                children=[SupervisorSpec(name="x", children=[c("a")]), c("b")],
            )
        )


class TestPoolSpec:
    def test_member_ids(self) -> None:
        """Members are <type>-agent-<n> with the pool's agent type."""
        pool = PoolSpec(agent_type="worker", template=c("t"), size=2)

        assert "worker-agent-2" == pool.member(2).id
        assert "worker" == pool.member(1).agent_type
        assert "worker-pool" == pool.name

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"size": 5, "max_size": 4}, "size 5 is larger than max_size 4"),
            ({"size": -1}, "size must be an int >= 0"),
            ({"max_size": 0, "size": 0}, "max_size must be >= 1"),
            ({"template": "sleep"}, "template must be a ChildSpec"),
            ({"agent_type": "no spaces"}, "agent_type"),
        ],
    )
    def test_rejects(self, kwargs: dict[str, object], fragment: str) -> None:
        """Bad pool fields raise InvalidPoolSpec naming them."""
        kwargs = {"agent_type": "w", "template": c(), **kwargs}
        with pytest.raises(InvalidPoolSpec) as info:
            PoolSpec(**kwargs)  # type: ignore[arg-type]

        assert fragment in str(info.value)

    def test_max_agents_checked_before_start(self) -> None:
        """A tree larger than max_agents is refused before anything starts."""
        tree = [PoolSpec(agent_type="w", template=c(), size=3)]
        with pytest.raises(MaxAgentsExceeded, match="starts 3 agents, more than max_agents=2"):
            Hub(tree, max_agents=2)
        with pytest.raises(ValueError, match="max_agents"):
            Hub(tree, max_agents=-1)
