"""Durable work for one hub in SQLite (see ``docs/work-sqlite.md``).

* :mod:`._queue`: :class:`SqliteWorkQueue`, the queue operations (decided in memory by
  :mod:`._local`, written behind) and the store's life (open, close, flush);
* :mod:`._actor`: the actor that writes each round in a worker thread and, at stop,
  hands back what agents hold;
* :mod:`._db`, :mod:`._schema`, :mod:`._codec`: the file (open, load, write), its schema
  and migrations, items as rows and what a restart finds;
* :mod:`._files`: the state directory and its lock.

Only the standard library's ``sqlite3`` is needed.
"""

from ._files import default_state_dir as default_state_dir
from ._queue import SqliteWorkQueue as SqliteWorkQueue

__all__ = ["SqliteWorkQueue", "default_state_dir"]
