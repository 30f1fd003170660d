"""JSON at the control socket's boundary, shared by the server and the client.

What comes in is made safe once, here: UTF-8 strictly, no NaN or Infinity, lone
surrogates replaced, nesting bounded; what goes out is valid JSON. Stdlib only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "MAX_ANSWER",
    "MAX_DEPTH",
    "MAX_LINE",
    "dumps",
    "loads_answer",
    "loads_request",
    "too_deep",
]

MAX_LINE = 64 * 1024
"""The longest request line the hub reads; a longer one is answered with an error."""
MAX_ANSWER = 256 * 1024 * 1024
"""The longest answer the client reads (a ``list`` of a very large tree is a few MiB)."""
MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a request (or an answer) may have."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[][{}]")


def too_deep(line: bytes) -> bool:
    """Whether ``line`` nests arrays or objects more than :data:`MAX_DEPTH` deep.

    Checked before decoding: the JSON decoder recurses per level, and a RecursionError
    near the stack limit also breaks whatever finalizer the garbage collector runs there.
    Brackets inside strings do not count; an unterminated string may count its brackets,
    which only makes a line that is not JSON anyway read as too deep.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', line)):
        if bracket[0] in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth = max(0, depth - 1)
    return False


# JSON at the boundary: what comes in is made safe once, here ---------------------------

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape that may decode to a lone surrogate (a valid pair decodes to one code
point, so any surrogate left in a decoded string is a lone one)."""


def _named_float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def loads_request(line: bytes | str) -> Any:
    """Decode a request line: UTF-8 strictly, then the agent protocol's JSON rules
    (:func:`agents._protocol.loads_strict`: NaN and Infinity refused, lone surrogates
    replaced), so whatever a client sends re-encodes anywhere in the hub.

    Raises:
        ValueError: not UTF-8 or not JSON; ``NotJSON`` for NaN and Infinity.
    """
    # The protocol's rules, imported on first use: a client command that sends no JSON
    # of its own (``status``) does not pay for the protocol's tables.
    from agents._protocol import loads_strict

    return loads_strict(line.decode() if isinstance(line, bytes) else line)


def loads_answer(line: bytes) -> Any:
    """Decode an answer line on the client: text made safe to print (lone surrogates
    replaced), and a NaN or Infinity from an older hub kept as its name, a string, so
    that ``--json`` prints valid JSON.

    Raises:
        ValueError: not UTF-8 or not JSON.
    """
    text = line.decode()
    obj = json.loads(text, parse_constant=str, parse_float=_named_float)
    if not _SURROGATE_ESCAPE.search(text):
        return obj
    from agents._protocol import safe_json  # rare: only for an answer that needs it

    return safe_json(obj)


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (invalid JSON): such a float is
    written as its name, a string."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, **kw)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
