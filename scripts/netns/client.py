"""The client of the end-to-end tests.

  client.py count URL N        N requests, a new TCP connection each; prints {"backend": count}; exit 1 on any failure
  client.py keepalive URL N    N requests on one connection; prints the backends that answered; exit 1 on failure
  client.py hold URL SECONDS   one keep-alive connection, a request every 0.1 s for SECONDS; prints the backends
  client.py first URL LIMIT    one request; prints the backend and the seconds it took; exit 1 if it failed or took
                               LIMIT seconds or more (a lost SYN is retransmitted after 1 s)
  client.py reuse URL_A URL_B NAME
                               one source port for a request to URL_A and then one to URL_B, port after port, until
                               NAME answered both twice (to NAT, the second connection has the reply key of the
                               first); prints the ports; exit 1 on any failure
"""
import http.client
import json
import socket
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


def one_from(url, source_port):
    """One request from `source_port`, which the previous connection from it may still hold in TIME_WAIT."""
    parts = urllib.parse.urlsplit(url)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(3)
        sock.bind(("", source_port))
        sock.connect((parts.hostname, parts.port or 80))
        sock.sendall(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer.decode().rsplit("\r\n\r\n", 1)[-1].strip()


def reuse(first_url, second_url, name):
    exercised = []
    # Ports below the ephemeral range: a connection the kernel gave one of them earlier (still in TIME_WAIT with the
    # same VIP) would refuse the first request (EADDRINUSE) and say nothing of sluice.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        first = max(1024, int(ports.read().split()[0]) - 128)
    for source_port in range(first, first + 128):
        try:
            if one_from(first_url, source_port) != name:
                continue
            if one_from(second_url, source_port) == name:
                exercised.append(source_port)
        except Exception as error:
            print(f"port {source_port}: {error}", file=sys.stderr)
            sys.exit(1)
        if len(exercised) == 2:
            print(json.dumps(exercised))
            return
    print(f"{name} did not answer both from any two of the ports", file=sys.stderr)
    sys.exit(1)


def main():
    if sys.argv[1] == "reuse":
        reuse(sys.argv[2], sys.argv[3], sys.argv[4])
        return
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
