"""Who answers ARP for an address, sampled (the VRRP test bed, scripts/netns/vrrp.sh).

  arp_watch.py INTERFACE ADDRESS EVENTS STOP
      Every 20 ms, broadcasts an ARP request for ADDRESS from INTERFACE's own address and collects the replies to it
      until the next request. Appends "<unix ms> <mac>[,<mac>]" to EVENTS whenever the set of MACs that answered a
      request differs from the previous answered request's, until the file STOP exists; then prints
      {"probes", "answered", "unanswered", "two_at_once"}: two_at_once counts requests that more than one MAC
      answered (two nodes claiming the address at once).
"""
import json
import os
import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806
INTERVAL = 0.02


def interface_ipv4(interface):
    # The first IPv4 address of INTERFACE, from `ip` (no ioctl dance needed in a test helper).
    out = os.popen(f"ip -4 -o addr show dev {interface}").read().split()
    return socket.inet_aton(out[out.index("inet") + 1].split("/")[0])


def main():
    interface, address, events_path, stop = sys.argv[1:5]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((interface, ETH_P_ARP))
    own_mac = sock.getsockname()[4]
    own_ip = interface_ipv4(interface)
    target = socket.inet_aton(address)
    request = (b"\xff" * 6 + own_mac + struct.pack("!H", ETH_P_ARP)
               + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own_mac + own_ip + b"\x00" * 6 + target)
    probes = answered = two = 0
    previous = None
    with open(events_path, "a") as events:
        while not os.path.exists(stop):
            sock.send(request)
            probes += 1
            macs = set()
            deadline = time.time() + INTERVAL
            while True:
                left = deadline - time.time()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    frame = sock.recv(128)
                except socket.timeout:
                    break
                if len(frame) < 42:
                    continue
                operation = struct.unpack("!H", frame[20:22])[0]
                # Only replies to this watcher's requests: gratuitous ARPs are not answers.
                if operation == 2 and frame[28:32] == target and frame[38:42] == own_ip:
                    macs.add(frame[22:28].hex(":"))
            if macs:
                answered += 1
                if len(macs) > 1:
                    two += 1
                if macs != previous:
                    events.write(f"{int(time.time() * 1000)} {','.join(sorted(macs))}\n")
                    events.flush()
                    previous = macs
    print(json.dumps({"probes": probes, "answered": answered, "unanswered": probes - answered,
                      "two_at_once": two}))


if __name__ == "__main__":
    main()
