"""The client of the end-to-end tests.

  client.py count URL N        N requests, a new TCP connection each; prints {"backend": count}; exit 1 on any failure
  client.py keepalive URL N    N requests on one connection; prints the backends that answered; exit 1 on failure
  client.py hold URL SECONDS   one keep-alive connection, a request every 0.1 s for SECONDS; prints the backends
  client.py first URL LIMIT    one request; prints the backend and the seconds it took; exit 1 if it failed or took
                               LIMIT seconds or more (a lost SYN is retransmitted after 1 s)
"""
import http.client
import json
import sys
import time
import urllib.parse


def one(url):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=3)
    try:
        connection.request("GET", parts.path or "/")
        return connection.getresponse().read().decode().strip()
    finally:
        connection.close()


def main():
    mode, url, amount = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "first":
        started = time.monotonic()
        name = one(url)
        took = time.monotonic() - started
        print(f"{name} {took:.3f}")
        sys.exit(0 if took < amount else 1)
    if mode == "count":
        counts, failures = {}, []
        for i in range(int(amount)):
            try:
                name = one(url)
                counts[name] = counts.get(name, 0) + 1
            except Exception as error:  # every failure is reported, none is fatal to the count
                failures.append(f"request {i}: {error}")
        print(json.dumps(counts, sort_keys=True))
        for failure in failures[:10]:
            print(failure, file=sys.stderr)
        sys.exit(1 if failures else 0)
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=3)
    names = set()
    deadline = time.time() + amount if mode == "hold" else None
    count = 0
    while (deadline and time.time() < deadline) or (not deadline and count < amount):
        connection.request("GET", parts.path or "/")
        names.add(connection.getresponse().read().decode().strip())
        count += 1
        if deadline:
            time.sleep(0.1)
    print(json.dumps(sorted(names)))


main()
