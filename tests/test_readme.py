"""README.md's examples stay true."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor import Hub, SupervisorSpec

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_tree_example_is_a_valid_spec() -> None:
    """The tree.py example builds a valid spec the hub accepts."""
    code = re.search(r"```python\n# tree\.py\n(.*?)```", README, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)
    spec = namespace["spec"]

    assert isinstance(spec, SupervisorSpec)
    Hub(spec)


def test_quick_start_test_command_is_what_ci_runs() -> None:
    """.ci/run runs README's quick-start test command, and that runs the manual one."""
    command = ".venv/bin/python -m pytest"
    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text()
    make_test = re.search(r"^test:.*\n\t(.*)$", (root / "Makefile").read_text(), re.M)

    assert "\nmake test " in README
    assert f"```sh\n{command}\n```" in README
    assert ci.rstrip().endswith("exec make test")
    assert make_test is not None and make_test.group(1).startswith(command)


def test_custom_policy_example_is_the_tested_one() -> None:
    """The OneAndNext class in README.md is the one the tests run."""
    block = re.search(
        r"(@attrs\.frozen\nclass OneAndNext:.*?return list\(children\[i : i \+ 2\]\))", README, re.S
    )
    tested = (Path(__file__).resolve().parent / "user_policies.py").read_text()

    assert block is not None
    assert block.group(1) in tested


def test_the_environment_is_activated_before_a_bare_hubvisor() -> None:
    """Commands before the first bare ``hubvisor`` in a shell block are
    ``.venv/bin/hubvisor``; the text says to activate the environment before it."""
    blocks = [m.start() for m in re.finditer(r"```sh\n", README)]
    first_bare = min(
        start
        for start in blocks
        if re.search(r"^hubvisor ", README[start : README.index("```", start + 5)], re.M)
    )
    before = README[:first_bare]
    assert ". .venv/bin/activate" in before[before.rindex("```") :]
