"""A scheduler: submit a batch, wait for all of it, retry each failure once (never twice).

Run it beside a hub whose agents of type "worker" take these payloads; it finds the hub
as `hubvisor` does ($HUBVISOR_SOCKET, else the hub id "hub"). Exit status 0 when every
task completed, 1 otherwise.
"""

from __future__ import annotations

import sys

from supervisor import Client

TASKS = [{"n": n} for n in range(10)] + [{"fail": "bad input"}]


def main() -> int:
    results: dict[str, object] = {}  # id -> the agent's result
    failures: dict[str, str] = {}  # id -> the error it ended with, retried once
    retried: set[str] = set()
    with Client() as hub:
        # One connection for the whole batch. Each task is submitted once, and its id
        # kept: a failed item is retried under the same id (`retry`), never submitted
        # again, so no task is ever queued twice.
        pending = [hub.submit("worker", task) for task in TASKS]
        while pending:
            again = []
            for item in hub.as_completed(pending, timeout=600):  # WaitTimeout after 10 min
                if item["status"] == "completed":
                    results[item["id"]] = item["result"]
                elif item["id"] not in retried:  # failed or dead: once more, no more
                    retried.add(item["id"])
                    hub.retry(item["id"])
                    again.append(item["id"])
                else:
                    failures[item["id"]] = item["error"]
            pending = again
    print(f"{len(results)} completed, {len(failures)} failed after one retry each")
    for item_id, error in sorted(failures.items()):
        print(f"  {item_id}: {error}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
