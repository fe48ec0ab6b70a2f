"""Long-lived connections across a VRRP failover (scripts/netns/vrrp.sh).

  vrrp_client.py hold URL CONNECTIONS READY STOP
      Opens CONNECTIONS keep-alive HTTP connections, writes READY once each has had its first answer, then sends a
      request on each in turn, rounds 0.1 s apart, until the file STOP exists. Prints {"connections", "requests",
      "broken", "moved", "longest_wait_ms"}: a connection is broken when a request on it fails, moved when a
      backend other than its first answers. A request may wait up to 20 s: the takeover (3 x advert_int plus
      skew) and TCP's retransmission back-off both fall within it, so only a connection that is really lost fails.
"""
import http.client
import json
import os
import sys
import time
import urllib.parse


def main():
    url, count, ready, stop = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    parts = urllib.parse.urlsplit(url)
    connections, first = [], []
    for _ in range(count):
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=20)
        connection.request("GET", parts.path or "/")
        first.append(connection.getresponse().read().decode().strip())
        connections.append(connection)
    with open(ready, "w") as out:
        out.write(json.dumps(first) + "\n")
    requests = moved = longest = 0
    broken = set()
    errors = []
    while not os.path.exists(stop):
        for index, connection in enumerate(connections):
            if index in broken:
                continue
            started = time.time()
            try:
                connection.request("GET", parts.path or "/")
                name = connection.getresponse().read().decode().strip()
                requests += 1
                if name != first[index]:
                    moved += 1
            except Exception as error:  # a broken connection is counted and reported, not fatal
                broken.add(index)
                errors.append(f"connection {index} at {time.time():.3f}: {error!r}")
            longest = max(longest, int((time.time() - started) * 1000))
        time.sleep(0.1)
    print(json.dumps({"connections": count, "requests": requests, "broken": len(broken), "moved": moved,
                      "longest_wait_ms": longest}))
    for error in errors[:10]:
        print(error, file=sys.stderr)


if __name__ == "__main__":
    main()
