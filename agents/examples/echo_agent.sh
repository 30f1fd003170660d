#!/usr/bin/env bash
# An agent in bash that speaks the hubvisor agent protocol v1 (docs/agent-protocol.md).
#
# It says HELLO=1 and READY, heartbeats in the background, and answers every
# ASSIGN={"item":...} with RESULT={"item":...,"attempt":...,"result":{"echo":<the ASSIGN
# object>}}; the assignment's payload is at result.echo.payload. STOP, SIGTERM or the hub
# closing the channel end it with status 0.
#
# Records on the SOCK_SEQPACKET channel: every write() is one record and every read()
# takes one whole record (a short read drops the rest of it). So:
# - reading: `dd bs=65537 count=1` does exactly one read(); bash's `read` builtin does
#   one-byte reads on a socket, which would take one byte of each record and lose the rest.
# - writing: `printf` is one write() only while the text fits bash's 4 KiB output
#   buffer; longer records go through `dd bs=65536 count=1 iflag=fullblock` (one write).
#
# Usage in a spec:
#   ChildSpec(id="echo", argv=["bash", "agents/examples/echo_agent.sh"], agent_type="echo")

set -u

FD=${HUBVISOR_NOTIFY_FD:?no HUBVISOR_NOTIFY_FD: run me under hubvisor}
HB=${HUBVISOR_HEARTBEAT_INTERVAL:-1}
ME=${HUBVISOR_AGENT_ID:-echo}

tmp=$(mktemp) || exit 1
hb_pid=
reader_pid=

cleanup() {
    [ -n "$hb_pid" ] && kill "$hb_pid" 2>/dev/null
    [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null
    rm -f "$tmp"
}
trap cleanup EXIT
trap 'echo "$ME: stopping (SIGTERM)" >&2; exit 0' TERM INT

send() { # one record, however long
    printf '%s' "$1" | dd bs=65536 count=1 iflag=fullblock status=none >&"$FD"
}

receive() { # one record into $msg; fails at end-of-channel
    # In the background and waited for, so a SIGTERM is handled at once.
    dd bs=65537 count=1 status=none <&"$FD" >"$tmp" &
    reader_pid=$!
    wait "$reader_pid"
    reader_pid=
    msg=
    IFS= read -r msg <"$tmp"
    [ -n "$msg" ]
}

printf 'HELLO=1' >&"$FD" || exit 1
printf 'READY' >&"$FD" || exit 1

# Heartbeats: `read -t` on a pipe nobody writes to is a sleep without a child process.
(
    exec {never}<> <(:)
    while printf 'HEARTBEAT' >&"$FD" 2>/dev/null; do
        read -r -t "$HB" -u "$never" _ || :
    done
) &
hb_pid=$!

while receive; do
    case $msg in
        PING) printf 'HEARTBEAT' >&"$FD" ;;
        STOP)
            echo "$ME: stopping (STOP from the hub)" >&2
            exit 0
            ;;
        ACK=*) ;;
        ASSIGN=*)
            json=${msg#ASSIGN=}
            # The hub writes "item" and "attempt" first; ids are [A-Za-z0-9_.:-].
            if ! [[ $json =~ \"item\"[[:space:]]*:[[:space:]]*\"([A-Za-z0-9_.:-]+)\" ]]; then
                echo "$ME: no item id in ${msg:0:64}" >&2
                continue
            fi
            item=${BASH_REMATCH[1]}
            if ! [[ $json =~ \"attempt\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then
                echo "$ME: no attempt in ${msg:0:64}" >&2
                continue
            fi
            attempt=${BASH_REMATCH[1]}
            reply="RESULT={\"item\":\"$item\",\"attempt\":$attempt,\"result\":{\"echo\":$json}}"
            if [ "${#reply}" -gt 65536 ]; then
                reply="FAIL={\"item\":\"$item\",\"attempt\":$attempt,\"error\":\"too large to echo\",\"retry\":false}"
            fi
            send "$reply"
            ;;
        *) echo "$ME: ignoring ${msg:0:64}" >&2 ;;
    esac
done
echo "$ME: the hub closed the channel" >&2
exit 0
