"""A userspace IP-in-IP endpoint for TUN-mode backends on kernels without the ipip module: receives protocol-4
packets on a raw socket and writes the inner IPv4 packet to a TUN device that holds the VIP, so the backend's own
TCP stack answers the client directly."""
import fcntl
import os
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000

tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
print("ready", flush=True)
while True:
    packet = raw.recv(65535)
    outer = (packet[0] & 0x0F) * 4
    os.write(tun, packet[outer:])
