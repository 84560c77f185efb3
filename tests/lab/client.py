#!/usr/bin/env python3
"""Ordinary clients for portcloak's fixtures and end-to-end tests.

Every network call has a timeout. Prints one line with the counts and exits
non-zero when any request that should succeed failed.

  client.py HOST burst N PORT      N sequential HTTP requests, each on a new connection
  client.py HOST parallel N PORT K N requests, K connections open at once
  client.py HOST mistype PORT     connect to PORT+1 and PORT+8001 (closed), then 20 requests
  client.py HOST health ROUNDS    poll TCP 22, 80, 443, 8080 and UDP 53, ROUNDS times
  client.py HOST loop SECONDS PORT  sequential requests for SECONDS seconds
  client.py HOST download PORT    fetch /big and compare every byte with services.big_body()
  client.py HOST dns N PORT       N UDP queries, each from a new socket (a new source port)
  client.py HOST midway PORT      one request in two halves: prints "sent-half" after the first,
                                  sends the second after a line on stdin
"""
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from services import big_body

TIMEOUT = 5.0


def http(host, port, between=None):
    """One request on a new connection. With `between`, the request goes in
    two halves and between() runs after the first."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        if port == 22:
            s.recv(256)
        request = b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n"
        if between:
            half = request.index(b"Host:")
            s.sendall(request[:half])
            between()
            request = request[half:]
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.0 200"):
            raise OSError("bad answer %r" % data[:40])


def wait_for_go():
    print("sent-half", flush=True)
    sys.stdin.readline()


def download(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # A fixed 512 KiB window keeps what is in flight below what the
        # veth backlog holds, so retransmissions count the path, not drops
        # of a burst in the lab's virtual link.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 512 << 10)
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        s.sendall(b"GET /big HTTP/1.0\r\nHost: lab\r\n\r\n")
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") or body != big_body():
        raise OSError("download differs: %d bytes" % len(body))


def udp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"query", (host, port))
        data, _ = s.recvfrom(512)
        if not data.startswith(b"lab-answer:"):
            raise OSError("bad answer")


def attempt(fn, *args):
    try:
        fn(*args)
        return True
    except OSError as e:
        print("failed:", fn.__name__, args, e, file=sys.stderr)
        return False


def main():
    host, mode = sys.argv[1], sys.argv[2]
    args = [int(x) for x in sys.argv[3:]]
    ok = bad = 0
    if mode == "burst":
        n, port = args
        for _ in range(n):
            if attempt(http, host, port):
                ok += 1
            else:
                bad += 1
    elif mode == "parallel":
        n, port, k = args
        with ThreadPoolExecutor(max_workers=k) as pool:
            for r in pool.map(lambda _: attempt(http, host, port), range(n)):
                ok, bad = (ok + 1, bad) if r else (ok, bad + 1)
    elif mode == "mistype":
        (port,) = args
        for wrong in (port + 1, port + 8001):
            try:
                socket.create_connection((host, wrong), timeout=1.5).close()
            except OSError:
                pass
        for _ in range(20):
            if attempt(http, host, port):
                ok += 1
            else:
                bad += 1
    elif mode == "health":
        (rounds,) = args
        for _ in range(rounds):
            for port in (22, 80, 443, 8080):
                ok, bad = (ok + 1, bad) if attempt(http, host, port) else (ok, bad + 1)
            ok, bad = (ok + 1, bad) if attempt(udp, host, 53) else (ok, bad + 1)
            time.sleep(0.5)
    elif mode == "loop":
        seconds, port = args
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ok, bad = (ok + 1, bad) if attempt(http, host, port) else (ok, bad + 1)
            time.sleep(0.02)
    elif mode == "midway":
        (port,) = args
        ok, bad = (1, 0) if attempt(http, host, port, wait_for_go) else (0, 1)
    elif mode == "dns":
        n, port = args
        for _ in range(n):
            ok, bad = (ok + 1, bad) if attempt(udp, host, port) else (ok, bad + 1)
    elif mode == "download":
        (port,) = args
        ok, bad = (1, 0) if attempt(download, host, port) else (0, 1)
    else:
        sys.exit("unknown mode " + mode)
    print("ok=%d failed=%d" % (ok, bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
