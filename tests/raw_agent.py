"""The one test agent that speaks the protocol on the raw socket (what any language can
do; tests/agents/test_agents.py covers agents.BaseAgent). Each test steers it by the payloads it
submits; ``argv(...)`` builds its command line.

It prints ``hello from ID pid PID`` once and ``doing ITEM`` per ASSIGN, heartbeats every
0.1 s from a thread (and once at start), and answers each ASSIGN according to its payload:

* ``{"n": 3}`` -> RESULT ``{"double": 6, "by": AGENT_ID}`` (with ``--who`` also
  ``"who": HUB/AGENT/PID``)
* ``{"sleep": s}`` -> sleeps ``s`` seconds first (heartbeating); ``{"hold": true}`` keeps
  the item until stopped
* ``{"crash": true}`` / ``{"hang": true}`` / ``{"bigckpt": true}`` -> on attempt 1: exits
  with code 3 / stops heartbeating and blocks / reports a 50 KB checkpoint and exits
* ``{"crash_if": PATH}`` -> exits with code 3 while PATH exists
* ``{"fail": "why"}`` -> FAIL retry=false (``{"fail_bytes": HEX}``: the error is those
  bytes decoded with surrogateescape, so its JSON holds a lone surrogate); ``{"stale": true}`` -> first a RESULT for
  attempt+1 (refused); ``{"exit_after": true}`` -> exits right after its RESULT
* ``{"fail_retry": "why"}`` -> FAIL retry=true (with ``"retry_after": s`` if given)
* ``{"handback_if": ID}`` -> the agent named ID hands the item back
* ``{"submit": TYPE}`` -> also submits ``{"n": n}`` for TYPE
* ``{"spew": N, "size": S}`` -> prints N lines of S characters, then ``spew done``

With ``--v2`` it says ``HELLO=2`` and honours ``CANCEL``: it prints ``cancel ITEM`` and
answers ``FAIL`` (``"cancelled"``, retry false) for the attempt; a ``{"sleep": s}`` item
then sleeps in a thread (the agent keeps reading) and its RESULT is not sent once
cancelled. ``{"deaf": true}`` (with ``hold``) ignores the CANCEL.
"""

from __future__ import annotations

import sys

PROGRAM = r"""
import json, os, socket, subprocess, sys, threading, time
if "--group-sleeper" in sys.argv:  # a second process in the agent's group
    subprocess.Popen(["sleep", "1000"])
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
me = os.environ["HUBVISOR_AGENT_ID"]
who = os.environ.get("HUBVISOR_HUB_ID", "") + "/" + me + "/" + str(os.getpid())
lock = threading.Lock()
beating = True
def send(text):
    with lock:
        s.send(text.encode())
def beat():
    while True:
        time.sleep(0.1)
        if beating:
            send("HEARTBEAT")
threading.Thread(target=beat, daemon=True).start()
print(f"hello from {me} pid {os.getpid()}", flush=True)
send("HEARTBEAT")  # a first one at once: a heartbeat age from the start
v2 = "--v2" in sys.argv
send("HELLO=2" if v2 else "HELLO=1")
send("READY")
cancelled, deaf = set(), set()
def later(item, attempt, p):
    time.sleep(p["sleep"])
    if (item, attempt) not in cancelled:
        result = {"double": 2 * p.get("n", 0), "by": me}
        send("RESULT=" + json.dumps({"item": item, "attempt": attempt, "result": result}))
while True:
    data = s.recv(65536)
    if not data:
        sys.exit(0)
    word, _, rest = data.decode().partition("=")
    if word == "STOP":
        sys.exit(0)
    if word == "CANCEL" and v2:
        c = json.loads(rest)
        print(f"cancel {c['item']}", flush=True)
        if c["item"] not in deaf:
            cancelled.add((c["item"], c["attempt"]))
            send("FAIL=" + json.dumps({"item": c["item"], "attempt": c["attempt"], "error": "cancelled", "retry": False}))
        continue
    if word != "ASSIGN":
        continue
    a = json.loads(rest)
    p, item, attempt = a["payload"], a["item"], a["attempt"]
    if not isinstance(p, dict):
        p = {}
    print(f"doing {item}", flush=True)
    if p.get("deaf"):
        deaf.add(item)
    if p.get("hold") is True:
        continue
    if v2 and "sleep" in p:
        threading.Thread(target=later, args=(item, attempt, p), daemon=True).start()
        continue
    if p.get("crash") and attempt == 1:
        os._exit(3)
    if p.get("crash_if") and os.path.exists(p["crash_if"]):
        os._exit(3)
    if p.get("hang") and attempt == 1:
        beating = False
        time.sleep(1000)
    if p.get("bigckpt") and attempt == 1:
        send("PROGRESS=" + json.dumps({"item": item, "attempt": attempt, "progress": 0.5, "checkpoint": "c" * 50000}))
        os._exit(3)
    if p.get("handback_if") == me:
        send("HANDBACK=" + json.dumps({"item": item, "attempt": attempt}))
        continue
    time.sleep(p.get("sleep", 0))
    if "spew" in p:
        for _ in range(p["spew"]):
            sys.stdout.write("x" * p["size"] + "\n")
        print("spew done", flush=True)
    if p.get("submit"):
        sub = {"type": p["submit"], "payload": {"n": p.get("n", 0)}, **p.get("submit_opts", {})}
        send("SUBMIT=" + json.dumps(sub))
    if "fail_bytes" in p:  # an error read with surrogateescape: JSON carries a lone surrogate
        p["fail"] = bytes.fromhex(p["fail_bytes"]).decode("utf-8", "surrogateescape")
    if "fail_retry" in p:  # FAIL retry=true, with "retry_after" when given (issue 21)
        f = {"item": item, "attempt": attempt, "error": p["fail_retry"], "retry": True}
        if "retry_after" in p:
            f["retry_after"] = p["retry_after"]
        send("FAIL=" + json.dumps(f))
        continue
    if "fail" in p:
        send("FAIL=" + json.dumps({"item": item, "attempt": attempt, "error": p["fail"], "retry": False}))
        continue
    if p.get("stale"):
        send("RESULT=" + json.dumps({"item": item, "attempt": attempt + 1, "result": "forged"}))
    result = {"double": 2 * p.get("n", 0), "by": me}
    if "--who" in sys.argv:
        result["who"] = who
    send("RESULT=" + json.dumps({"item": item, "attempt": attempt, "result": result}))
    if p.get("exit_after"):
        os._exit(0)
"""


def argv(*flags: str) -> list[str]:
    """The agent's command line (``"--group-sleeper"``: start a ``sleep`` in its group;
    ``"--who"``: say which hub, agent and pid did each item; ``"--v2"``: protocol v2,
    honouring ``CANCEL``)."""
    return [sys.executable, "-c", PROGRAM, *flags]
