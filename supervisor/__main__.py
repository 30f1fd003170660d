"""``python -m supervisor`` is the ``hubvisor`` command."""

from supervisor._cli import main

main()
