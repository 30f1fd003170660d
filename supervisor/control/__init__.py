"""The control socket of a running hub, and the client ``hubvisor`` uses.

- :mod:`.paths`: where the socket lives and who may reach it;
- :mod:`.wire`: JSON at the boundary (safe in, valid out);
- :mod:`.ops`: the table of operations, declared (no hub, no rich);
- :mod:`.handlers`: what each op does in the hub, by name (streaming ones into a
  :mod:`.stream`); :mod:`.events`: the event ring service behind ``hubvisor events``;
- :mod:`.printers`: how ``hubvisor`` prints each op's result, by name;
- :mod:`.server`: the hub's side (framing, bounds, dispatch);
- :mod:`.client`: the blocking client (no trio, no hub).

Adding an operation is one entry in ``ops.OPS``, one in ``handlers.HANDLERS`` (or
``STREAMS``) and one in ``printers.PRINTERS``. See ``docs/control.md``. This package's
``__init__`` imports nothing, so the client commands load only what they use.
"""
