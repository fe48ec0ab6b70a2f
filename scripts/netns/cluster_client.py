"""The client of the cluster test bed (scripts/netns/cluster.sh).

  cluster_client.py hold URL CONNECTIONS READY STOP
      Opens CONNECTIONS keep-alive HTTP connections, writes READY once every one has had its first answer, then
      sends a request on each connection in turn, round after round (0.1 s apart), until the file STOP exists.
      Prints {"connections", "requests", "broken", "moved", "longest_wait_ms"}: a connection is broken when a
      request on it fails, and moved when a backend other than its first one answers.
"""
import http.client
import json
import os
import sys
import time
import urllib.parse


def hold(url, count, ready, stop):
    parts = urllib.parse.urlsplit(url)
    connections, first = [], []
    for _ in range(count):
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
        connection.request("GET", parts.path or "/")
        first.append(connection.getresponse().read().decode().strip())
        connections.append(connection)
    with open(ready, "w") as out:
        out.write(json.dumps(first) + "\n")
    alive = [True] * count
    requests = count
    broken = moved = 0
    longest = 0.0
    errors = []
    while not os.path.exists(stop):
        for i, connection in enumerate(connections):
            if not alive[i]:
                continue
            started = time.monotonic()
            try:
                connection.request("GET", parts.path or "/")
                name = connection.getresponse().read().decode().strip()
            except Exception as error:  # a failed request breaks its connection; the others go on
                alive[i] = False
                broken += 1
                errors.append(f"connection {i}: {error!r}")
                continue
            longest = max(longest, time.monotonic() - started)
            requests += 1
            if name != first[i]:
                alive[i] = False
                moved += 1
                errors.append(f"connection {i}: {first[i]} then {name}")
        time.sleep(0.1)
    print(json.dumps({
        "connections": count,
        "requests": requests,
        "broken": broken,
        "moved": moved,
        "longest_wait_ms": round(longest * 1000),
    }))
    for error in errors[:10]:
        print(error, file=sys.stderr)


def main():
    if sys.argv[1] == "hold":
        hold(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


main()
