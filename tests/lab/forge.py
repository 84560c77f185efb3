#!/usr/bin/env python3
"""Forged TCP segments for portcloak's end-to-end tests: any source
address, from a raw socket (IPv4 with IP_HDRINCL, IPv6 with IPPROTO_RAW).
Only ever run inside the lab's network namespaces, to lab addresses.

  forge.py SRC DST SPORT DPORT FLAGS [--seq N] [--ack N] [--window N] [--count N] [--random-ack]

FLAGS is a string of S A F R P U, or "none" for a NULL segment. A SYN
carries a client's usual options (MSS, SACK, timestamps, window scale) and
window 64240, so it looks like any kernel's: a blind spoofer's best case.
With --random-ack each of --count segments guesses a new acknowledgement.
"""
import argparse
import ipaddress
import random
import socket
import struct

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(src, dst, sport, dport, flags, seq, ack, window):
    options = b""
    if flags & FLAG_BITS["S"]:
        # MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        options = (b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", 12345, 0)
                   + b"\x01\x03\x03\x07")
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0) + options
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(tcp), 6)
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    if src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000,
                         64, 6, 0, src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src.packed, dst.packed)
    return ip + tcp


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("sport", type=int)
    p.add_argument("dport", type=int)
    p.add_argument("flags")
    p.add_argument("--seq", type=int, default=1000)
    p.add_argument("--ack", type=int, default=0)
    p.add_argument("--window", type=int, default=64240)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--random-ack", action="store_true")
    a = p.parse_args()
    src, dst = ipaddress.ip_address(a.src), ipaddress.ip_address(a.dst)
    flags = 0 if a.flags == "none" else sum(FLAG_BITS[c] for c in a.flags)
    if src.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(a.count):
        ack = random.getrandbits(32) if a.random_ack else a.ack
        s.sendto(segment(src, dst, a.sport, a.dport, flags, a.seq, ack, a.window), (a.dst, 0))


if __name__ == "__main__":
    main()
