"""Hubs behind Redis Sentinel: one master, one replica, 3 Sentinels (tests/redis_sentinel.py),
real ``redis-server`` processes; hubs as real ``hubvisor run`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor._errors import ConfigError
from supervisor._redis_link import clean_error, make_client, redact_url
from supervisor._redis_sentinel import parse, sentinel_url

from ...redis_hubs import HubProc, item, outcomes, record, wait_for
from ...redis_sentinel import MASTER, SentinelTopology, sentinel_env, sentinels

__all__ = ["sentinel_env", "sentinels"]

pytestmark = pytest.mark.slow


# The URL ------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    assert parse("redis+sentinel://h1:26379,[::1]:26380/mymaster/2") == (
        [("h1", 26379), ("::1", 26380)],
        "mymaster",
        2,
        None,
        None,
    )
    assert parse("redis+sentinel://u:p%40ss@h:1/m") == ([("h", 1)], "m", 0, "u", "p@ss")
    assert parse("redis+sentinel://:pw@h:1/m")[3:] == (None, "pw")
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h/m", "redis+sentinel://h:1/m/x"):
        with pytest.raises(ValueError):
            parse(bad)


def test_the_cli_builds_the_url_from_the_master_and_the_sentinels() -> None:
    assert (
        sentinel_url("mymaster", "redis://:pw@10.0.0.5:26379/3, redis://10.0.0.6:26379")
        == "redis+sentinel://:pw@10.0.0.5:26379,10.0.0.6:26379/mymaster/3"
    )
    assert sentinel_url("m", "h:1") == "redis+sentinel://h:1/m"
    with pytest.raises(ValueError, match="redis://host:port"):
        sentinel_url("m", "redis://:secret@h")  # no port
    with pytest.raises(ValueError, match="master's name"):
        sentinel_url("a/b", "h:1")


def test_a_sentinel_url_is_shown_without_its_password_and_a_bad_one_names_the_form() -> None:
    url = "redis+sentinel://:s3cret@h1:1,h2:2/m/0"
    assert redact_url(url) == "redis+sentinel://:***@h1:1,h2:2/m/0"
    assert "s3cret" not in clean_error(ValueError(f"oops {url}"), url)
    with pytest.raises(ConfigError, match=r"redis\+sentinel://10.0.0.5:26379") as err:
        make_client(
            "redis+sentinel://:s3cret@h1/m",
            timeout=1,
            connections=1,
            client_name="t",
            error=ConfigError,
        )
    assert "s3cret" not in str(err.value)


# Against the topology -----------------------------------------------------------------


def test_the_fixture_has_a_master_a_linked_replica_and_3_sentinels(
    sentinel_env: SentinelTopology,
) -> None:
    master, replica = sentinel_env.master(), sentinel_env.replica()
    assert master.port != replica.port
    with master.client() as c:
        c.set("k", "v")
        assert c.wait(1, 5000) == 1
    with replica.client() as c:
        assert c.get("k") == "v"
    for s in sentinel_env.sentinels:
        with s.client() as c:
            assert len(c.sentinel_slaves(MASTER)) == 1


def test_make_client_writes_to_the_master_the_sentinels_name(
    sentinel_env: SentinelTopology,
) -> None:
    client = make_client(
        sentinel_env.url(), timeout=2, connections=1, client_name="t", error=ConfigError
    )
    try:
        client.set("via", "sentinel")
        role = client.execute_command("ROLE")[0]
    finally:
        client.close()
    assert (role.decode() if isinstance(role, bytes) else role) == "master"
    with sentinel_env.master().client() as c:
        assert c.get("via") == "sentinel"


@pytest.fixture
def sentinel_hubs(tmp_path: Path, sentinel_env: SentinelTopology) -> Iterator[Any]:
    started: list[HubProc] = []

    def make(hub_id: str, **kw: Any) -> HubProc:
        args = ("--redis-sentinel", MASTER, *kw.pop("args", ()))
        h = HubProc(tmp_path, hub_id, sentinel_env.sentinel_urls, args=args, **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


def test_two_hubs_share_work_through_the_master_the_sentinels_name(
    sentinel_env: SentinelTopology, sentinel_hubs: Any
) -> None:
    a = sentinel_hubs("A", size=2, lease=2.0).start()
    b = sentinel_hubs("B", size=2, lease=2.0).start()
    ids = []
    for n in range(30):
        answer = (a if n % 2 else b).submit({"n": n, "sleep": 0.05})
        assert answer["stored"], answer
        ids.append(answer["id"])
    with sentinel_env.master().client() as client:
        wait_for(lambda: len(record(client)) >= 30, 60, "every item to complete")
        assert sorted(outcomes(client)) == sorted(ids)
        assert set(outcomes(client).values()) == {1}
        assert {row["hub"] for row in record(client)} == {"A", "B"}
        assert item(client, ids[3])["result"]["double"] == 6
        # the registry mirror writes there too
        wait_for(lambda: client.exists("hubvisor:hub:A", "hubvisor:hub:B") == 2, 30, "mirror")
    assert "redis+sentinel://127.0.0.1:" in a.log.read_text()


def test_redis_sentinel_without_redis_naming_the_sentinels_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from supervisor._cli import main

    spec = tmp_path / "spec.py"
    spec.write_text("tree = []\n")
    result = CliRunner().invoke(main, ["run", str(spec), "--redis-sentinel", "mymaster"])
    assert result.exit_code == 2
    assert "--redis-sentinel MASTER needs --redis naming the Sentinels" in result.output
    result = CliRunner().invoke(
        main, ["run", str(spec), "--redis-sentinel", "mymaster", "--redis", "redis://h"]
    )
    assert result.exit_code == 2
    assert "redis://host:port" in result.output
