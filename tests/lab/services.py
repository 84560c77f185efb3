#!/usr/bin/env python3
"""Lab services for portcloak's fixtures and end-to-end tests.

Listens on the given TCP ports (a tiny HTTP/1.0 server; port 22 sends an
SSH banner first; `GET /big` answers BIG_SIZE pseudo-random bytes) and UDP
ports (echoes a short answer, like a resolver).
Binds to :: with dual-stack sockets, so IPv4 and IPv6 both work.
Runs until killed. Only ever used inside the lab's network namespaces.
"""
import argparse
import random
import socket
import socketserver
import threading

BODY = b"portcloak lab\n" * 4
BIG_SIZE = 20 << 20
_big = []


def big_body():
    """The download body: the same pseudo-random bytes in server and client."""
    if not _big:
        _big.append(random.Random(20).randbytes(BIG_SIZE))
    return _big[0]


class Http(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        try:
            if self.server.server_address[1] == 22:
                self.request.sendall(b"SSH-2.0-OpenSSH_9.2p1 lab\r\n")
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                data += chunk
            body = big_body() if data.startswith(b"GET /big ") else BODY
            head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            self.request.sendall(head)
            self.request.sendall(body)
        except OSError:
            pass


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(b"lab-answer:" + data[:32], self.client_address)


class Dual:
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class TcpServer(Dual, socketserver.ThreadingTCPServer):
    pass


class UdpServer(Dual, socketserver.ThreadingUDPServer):
    pass


class Tcp4Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Udp4Server(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int, nargs="*", default=[22, 80, 443, 8080])
    p.add_argument("--udp", type=int, nargs="*", default=[53])
    p.add_argument("--bind", help="one IPv4 address to serve on, so answers leave from it")
    a = p.parse_args()
    tcp, udp = (TcpServer, UdpServer) if a.bind is None else (Tcp4Server, Udp4Server)
    host = "::" if a.bind is None else a.bind
    servers = [tcp((host, port), Http) for port in a.tcp]
    servers += [udp((host, port), Udp) for port in a.udp]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
