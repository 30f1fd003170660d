"""The wheel and the sdist build without network, and the wheel works installed alone.

The sdist is built from a copy of the checkout and the wheel from the unpacked sdist (so
the sdist is complete), with the setuptools of this environment (the ``test`` extra has
setuptools >= 77, which ``license = "MIT"`` needs) and no download. The wheel goes into a
fresh venv outside the checkout whose dependencies come from this environment's
site-packages (a ``.pth`` line, which adds no editable hubvisor: ``.pth`` files there are
not read), and there ``hubvisor check`` reads a tree, a hub runs a ``BaseAgent`` that
completes an item, and ``mypy --strict`` checks an agent against the installed types.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS_NEEDED = (77,)

AGENT = """
from agents.base import JSON, Assignment, BaseAgent


class Counter(BaseAgent):
    agent_type = "count"

    def validate_assignment(self, payload: JSON) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise ValueError("payload must be {'text': str}")

    async def do_work(self, assignment: Assignment) -> JSON:
        words: list[JSON] = list(assignment.payload["text"].split())
        return {"words": words, "count": len(words)}


if __name__ == "__main__":
    Counter.main()
"""

BAD_AGENT = """
from agents.base import JSON, Assignment, BaseAgent


class Bad(BaseAgent):
    async def do_work(self, assignment: Assignment) -> JSON:
        return {"words": {"a", "b"}}
"""

TREE = """
import sys
from pathlib import Path

from supervisor import ChildSpec, SupervisorSpec

AGENT = str(Path(__file__).with_name("agent.py"))
spec = SupervisorSpec(
    name="hub",
    children=[ChildSpec(id="count", argv=[sys.executable, AGENT], agent_type="count", shutdown=5)],
)
"""

RUN = """
import trio
from supervisor import Hub
from tree import spec


async def main() -> None:
    async with trio.open_nursery() as nursery:
        hub = await nursery.start(Hub(spec).serve)
        item = hub.work.submit("count", {"text": "one two three"})
        done = await hub.work.wait(item.id, timeout=60)
        print(done.status.value, done.result)
        await hub.stop()


trio.run(main)
"""

IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".*_cache", ".coverage*"
)


def run(argv: list[str | Path], cwd: Path, timeout: float = 120) -> str:
    """Run ``argv`` without PYTHONPATH (nothing of the checkout); its standard output
    (with its standard error after it), or fail."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert 0 == result.returncode, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout + "\n" + result.stderr


def build(kind: str, source: Path, dist: Path) -> Path:
    """Build the sdist or the wheel of ``source`` into ``dist`` with setuptools' PEP 517
    hooks in this interpreter (no isolation, so no download)."""
    code = f"from setuptools import build_meta as b; print('BUILT', b.build_{kind}({str(dist)!r}))"
    output = run([sys.executable, "-c", code], source)
    (name,) = [line.split()[1] for line in output.splitlines() if line.startswith("BUILT ")]
    return dist / name


def fresh_venv(where: Path) -> Path:
    """A venv without pip at ``where`` whose dependencies come from this environment;
    its interpreter."""
    run([sys.executable, "-m", "venv", "--without-pip", where], where.parent)
    new = where / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = run([new, "-c", code], where.parent).split("\n", 1)[0]
    # trio, attrs, click, rich... from this environment, after the venv's own packages.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(purelib, "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    return new


def pip_install(python: Path, *args: str | Path) -> None:
    """Install into ``python``'s venv with this environment's pip, offline."""
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    run([*pip, "--no-index", "--no-build-isolation", *args], python.parent.parent.parent)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the checkout (no .git, .venv, caches or build output)."""
    version = importlib.metadata.version("setuptools")
    if tuple(int(p) for p in version.split(".")[:1]) < SETUPTOOLS_NEEDED:
        pytest.fail(
            f"setuptools {version} cannot build hubvisor (license = 'MIT' needs >= 77); "
            "reinstall the test extra: .venv/bin/pip install -e '.[test]'"
        )
    copy = tmp_path_factory.mktemp("checkout") / "hubvisor"
    shutil.copytree(ROOT, copy, ignore=IGNORE)
    return copy


@pytest.fixture(scope="module")
def built(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist of a clean copy of the checkout, the wheel of the sdist."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    dist.mkdir()
    sdist = build("sdist", source, dist)
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "unpacked", filter="data")
    (unpacked,) = (base / "unpacked").iterdir()
    wheel = build("wheel", unpacked, dist)
    return sdist, wheel


@pytest.mark.slow
def test_the_wheel_and_sdist_carry_the_license_data_and_types(built: tuple[Path, Path]) -> None:
    """LICENSE as license metadata, echo_agent.sh, py.typed, URLs, classifiers, extras."""
    sdist, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = "hubvisor-0.1.0.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
    with tarfile.open(sdist) as tar:
        sdist_names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}

    expected = {
        f"{info}/licenses/LICENSE",
        "agents/examples/echo_agent.sh",
        "agents/py.typed",
        "supervisor/py.typed",
        "strategies/py.typed",
        "supervisor/work/redis/_scripts.py",
    }
    assert expected <= names
    assert not [n for n in names if n.startswith("tests/")]
    assert {"LICENSE", "agents/examples/echo_agent.sh", "pyproject.toml"} <= sdist_names
    for line in (
        "License-Expression: MIT",
        "License-File: LICENSE",
        "Project-URL: Source, https://github.com/hubvisor/hubvisor",
        "Classifier: Typing :: Typed",
        "Provides-Extra: redis",
        "Provides-Extra: metrics",
        'Requires-Dist: prometheus_client>=0.20; extra == "metrics"',
    ):
        assert line in metadata.splitlines(), line
    assert "Copyright (c) 2026 the hubvisor authors" in (ROOT / "LICENSE").read_text()


@pytest.mark.slow
def test_the_wheel_works_installed_in_a_fresh_venv(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    """check, a hub running a BaseAgent, and mypy --strict, all from the installed wheel."""
    _, wheel = built
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    pip_install(python, wheel)
    work = tmp_path / "work"
    work.mkdir()
    (work / "agent.py").write_text(AGENT)
    (work / "bad_agent.py").write_text(BAD_AGENT)
    (work / "tree.py").write_text(TREE)
    (work / "run_tree.py").write_text(RUN)

    where = run([python, "-c", "import supervisor, agents; print(supervisor.__file__)"], work)
    assert where.startswith(str(venv)), where
    checked = run([venv / "bin" / "hubvisor", "check", "tree.py"], work)
    ran = run([python, "run_tree.py"], work)

    assert "tree.py: OK" in checked
    assert "completed {'words': ['one', 'two', 'three'], 'count': 3}" in ran.splitlines()
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    mypy += ["--python-executable", python]
    run([*mypy, "agent.py", "tree.py", "run_tree.py"], work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    bad = subprocess.run(
        [*mypy, "bad_agent.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert 1 == bad.returncode, bad.stdout + bad.stderr
    assert 'bad_agent.py:7: error: Dict entry 0 has incompatible type "str": "set[str]"' in (
        bad.stdout
    )


@pytest.mark.slow
def test_an_editable_install_is_visible_to_mypy_from_any_directory(
    source: Path, tmp_path: Path
) -> None:
    """`pip install -e .` (README, scripts/quickstart) puts the checkout on sys.path with a
    static .pth file, not setuptools' import hook (which mypy cannot see): mypy run
    outside the checkout finds hubvisor's types."""
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", source)
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "agent.py").write_text(AGENT)

    assert [] == list(site.glob("__editable__*finder*.py"))
    assert [str(source)] == (site / "__editable__.hubvisor-0.1.0.pth").read_text().split()
    where = run([python, "-c", "import agents; print(agents.__file__)"], work)
    assert where.startswith(str(source)), where
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    run([*mypy, "--python-executable", python, "agent.py"], work)
