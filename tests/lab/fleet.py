#!/usr/bin/env python3
"""End-to-end: a fleet of four protected hosts sharing bans through NATS
JetStream (Debian's nats-server, in a broker namespace, JetStream on a
temporary directory). All namespaces hang on one bridge, 198.18.8.0/24:

  broker .9 (nats-server; a three-node cluster later, ports 4222-4224)
  hosts  .11 .12 .13 .14, each with its own portcloak and lab services
  attacker .2 (and .50-.53 for more scanners), client .3

Checks: a scan of host 1 bans the attacker on the others within 1 s, and
nmap then learns nothing there; the propagation time of 100 bans (p50,
p99); a sweep of one closed port on each of the 4 hosts bans the source
fleet-wide; a client proven on host 2 keeps every request while a decoy
scan with its address runs against host 1; a message signed with another
key changes nothing; with the broker stopped for 10 s a new ban waits and
then reaches the others; a host restarted later gets the bans it missed;
in a three-node cluster with one node killed bans still reach every host.
Exits non-zero on the first failed check.

  fleet.py PORTCLOAK_BINARY WORKDIR
  fleet.py publish HOST PORT SUBJECT PAYLOAD   (inside a namespace: one raw NATS publish)
  fleet.py probe HOST PORT                     (inside a namespace: one connect, 1 s)
"""
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import Failed, check, log, run  # noqa: E402
import lab as labmod  # noqa: E402

HERE = os.path.abspath(__file__)
LABDIR = os.path.dirname(HERE)
NET = "198.18.8."
BROKER = NET + "9"
HOSTS = [NET + str(11 + i) for i in range(4)]
ATTACKER, CLIENT = NET + "2", NET + "3"
NMAP = ["nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s", "-oX", "-"]


def publish(host, port, subject, payload):
    """One plain NATS publish, by the protocol's text form."""
    s = socket.create_connection((host, int(port)), timeout=3)
    s.recv(4096)  # INFO
    body = payload.encode()
    s.sendall(b"CONNECT {\"verbose\":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n" % (subject.encode(), len(body), body))
    s.settimeout(3)
    got = b""
    while b"PONG" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()


def probe(host, port, src=None):
    try:
        socket.create_connection((host, int(port)), 1, (src, 0) if src else None).close()
        print("open")
    except OSError:
        print("none")


class Fleet:
    """The namespaces, the bridge, the broker and the daemons."""

    def __init__(self, prefix, binary, workdir):
        self.p, self.binary, self.workdir = prefix, binary, workdir
        self.names = {"br": prefix + "-br", "nats": prefix + "-n", "att": prefix + "-a", "cli": prefix + "-c"}
        for i in range(4):
            self.names["h%d" % (i + 1)] = prefix + "-h%d" % (i + 1)
        self.procs, self.daemons, self.brokers = [], [], {}

    def ns(self, ns, *cmd):
        return ["ip", "netns", "exec", ns] + list(cmd)

    def spawn(self, ns, *cmd, **kw):
        proc = subprocess.Popen(self.ns(ns, *cmd), **kw)
        self.procs.append(proc)
        return proc

    def up(self):
        self.down()
        for ns in self.names.values():
            run(["ip", "netns", "add", ns])
            run(self.ns(ns, "ip", "link", "set", "lo", "up"))
        br = self.names["br"]
        run(self.ns(br, "ip", "link", "add", "br0", "type", "bridge"))
        run(self.ns(br, "ip", "link", "set", "br0", "up"))
        addrs = {"nats": [BROKER], "att": [ATTACKER, NET + "50", NET + "51", NET + "52", NET + "53"],
                 "cli": [CLIENT]}
        for i in range(4):
            addrs["h%d" % (i + 1)] = [HOSTS[i]]
        for role, ips in addrs.items():
            ns, dev = self.names[role], "%s-%s" % (self.p, role)
            run(["ip", "link", "add", dev, "netns", br, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(self.ns(br, "ip", "link", "set", dev, "master", "br0", "up"))
            run(self.ns(ns, "ip", "link", "set", "eth0", "up"))
            for ip in ips:
                run(self.ns(ns, "ip", "addr", "add", ip + "/24", "dev", "eth0"))
        for i in range(4):
            self.spawn(self.names["h%d" % (i + 1)], "python3", os.path.join(LABDIR, "services.py"))
        for h in HOSTS:
            self.wait_port(h, 80)

    def wait_port(self, host, port, seconds=10):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.connects("cli", host, port):
                return
            time.sleep(0.1)
        raise RuntimeError("%s:%d never answered" % (host, port))

    def connects(self, role, host, port):
        r = run(self.ns(self.names[role], "python3", HERE, "probe", host, str(port)), timeout=10, check=False)
        return r.stdout.strip() == "open"

    def broker(self, name, port, cluster=None):
        """Starts nats-server `name` on BROKER:port with JetStream; in a
        cluster with `cluster` (the other nodes' cluster ports)."""
        store = os.path.join(self.workdir, "js-" + name)
        os.makedirs(store, exist_ok=True)
        conf = os.path.join(self.workdir, name + ".conf")
        with open(conf, "w") as f:
            f.write('server_name: %s\nlisten: "%s:%d"\njetstream { store_dir: "%s" }\n' % (name, BROKER, port, store))
            if cluster:
                f.write('cluster { name: pcf, listen: "%s:%d", routes: [%s] }\n'
                        % (BROKER, port + 2000, ", ".join('"nats://%s:%d"' % (BROKER, c) for c in cluster)))
        logf = open(os.path.join(self.workdir, name + ".log"), "a")
        proc = self.spawn(self.names["nats"], "nats-server", "-c", conf, stdout=logf, stderr=subprocess.STDOUT)
        self.brokers[name] = proc
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.connects("h1", BROKER, port):
                return proc
            time.sleep(0.1)
        raise RuntimeError("nats-server %s did not start" % name)

    def stop_broker(self, name, sig=signal.SIGTERM):
        proc = self.brokers.pop(name)
        proc.send_signal(sig)
        proc.wait(20)

    def daemon(self, i, url, key, extra=""):
        rules = ('[fleet]\nurl = "%s"\nname = "host%d"\nkey_file = "%s"\n%s\n[ban]\nduration = "10m"\n'
                 % (url, i, key, extra))
        return labmod.Daemon(Host(self, self.names["h%d" % i]), self.binary,
                             os.path.join(self.workdir, "host%d" % i), extra_rules=rules,
                             daemon_keys='metrics = ""')

    def down(self):
        labmod.teardown(self.procs, self.names.values())
        self.procs = []


class Host:
    """One protected host, as lab.Daemon sees a lab: its namespace is the
    server."""

    def __init__(self, fleet, ns):
        self.fleet, self.server = fleet, ns
        self.daemons = fleet.daemons

    def ns(self, ns, *cmd):
        return self.fleet.ns(ns, *cmd)

    def spawn(self, ns, *cmd, **kw):
        return self.fleet.spawn(ns, *cmd, **kw)


def banned(d, source):
    return any(b["source"] == source for b in d.bans())


def ban_of(d, source):
    return next((b for b in d.bans() if b["source"] == source), None)


def wait(cond, seconds, step=0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def nmap_states(f, *args):
    r = run(f.ns(f.names["att"], *NMAP, *args), timeout=120, check=False)
    return labmod.port_states(r.stdout)


def fleet_status(d):
    return d.status()["fleet"]


def events(d, kind):
    try:
        with open(d.events) as fh:
            return [json.loads(line) for line in fh if '"event":"%s"' % kind in line]
    except OSError:
        return []


def body(f):
    key, wrong = os.path.join(f.workdir, "fleet.key"), os.path.join(f.workdir, "wrong.key")
    for k in (key, wrong):
        if os.path.exists(k):
            os.remove(k)
        run([f.binary, "keygen", k])
    check(run([f.binary, "check", "/dev/stdin"], input='[fleet]\nurl = "nats://%s:4222"\n' % BROKER,
              check=False).returncode != 0, "check refuses a fleet without its key file")
    f.broker("n1", 4222)
    url = "nats://%s:4222" % BROKER
    daemons = [f.daemon(i + 1, url, key) for i in range(4)]
    for d in daemons:
        d.start()
    check(wait(lambda: all(fleet_status(d)["connected"] for d in daemons), 10),
          "the four hosts are connected to the broker")
    h1, h2, h3, h4 = daemons

    log("nmap -sS against host 1")
    nmap_states(f, "-sS", "-p1-200", HOSTS[0])
    check(banned(h1, ATTACKER), "host 1 bans the scanner")
    t0 = time.monotonic()
    check(wait(lambda: banned(h2, ATTACKER) and banned(h3, ATTACKER) and banned(h4, ATTACKER), 1.0),
          "hosts 2, 3 and 4 ban it within 1 s (%.2f s)" % (time.monotonic() - t0))
    for i in (1, 2):
        st = nmap_states(f, "-sS", "-p1-1000", HOSTS[i])
        learned = sum(n for s, n in st.items() if s in ("open", "closed", "unfiltered"))
        check(learned == 0, "nmap against host %d learns nothing: %s" % (i + 1, st))

    log("propagation of 100 bans from host 1")
    sources = ["198.18.200.%d" % n for n in range(1, 101)]
    for s in sources:
        h1.ctl("ban", s, "--for", "10m")
    check(wait(lambda: all(banned(h2, s) for s in sources[-3:]), 5), "host 2 got the last bans")
    time.sleep(1.5)  # the event files are flushed after a quiet second
    sent = {e["source"]: e["ts"] for e in events(h1, "ban") if e["source"] in sources}
    got = {e["source"]: e["ts"] for e in events(h2, "ban") if e["source"] in sources}
    delays = sorted((got[s] - sent[s]) * 1000 for s in sources if s in sent and s in got)
    check(len(delays) == 100, "host 2 applied all 100 bans (%d)" % len(delays))
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    log("  propagation host 1 -> host 2 over %d bans: p50 %.0f ms, p99 %.0f ms, max %.0f ms"
        % (len(delays), p50, p99, delays[-1]))
    check(p99 <= 1000, "p99 %.0f ms is within 1 s" % p99)

    log("a sweep: one closed port on each of the four hosts from %s50" % NET)
    for h in HOSTS:
        # A kernel's connect: no tool signature, one closed port per host.
        run(f.ns(f.names["att"], "python3", HERE, "probe", h, "7777", NET + "50"), timeout=10)
    check(wait(lambda: all(banned(d, NET + "50") for d in daemons), 5),
          "the sweeper is banned on every host")
    reasons = [ban_of(d, NET + "50")["reason"] for d in daemons]
    check(all(r.startswith("fleet-sweep") for r in reasons), "for a fleet-sweep: %s" % reasons)

    log("a client proven on host 2, and a decoy scan with its address against host 1")
    loop = f.spawn(f.names["cli"], "python3", os.path.join(LABDIR, "client.py"), HOSTS[1], "loop", "10", "80",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    run(f.ns(f.names["att"], "nmap", "-n", "-Pn", "-sS", "-p1-100", "--max-retries", "0", "-S", NET + "51",
             "-e", "eth0", "-D", CLIENT, HOSTS[0]), timeout=60, check=False)
    check(wait(lambda: banned(h1, CLIENT), 3), "host 1 bans the decoy's address")
    check(wait(lambda: ban_of(h2, CLIENT) is not None, 3), "host 2 gets the ban")
    check(ban_of(h2, CLIENT)["kind"] == "quarantine", "host 2 quarantines its proven client, never bans it")
    out, _ = loop.communicate(timeout=60)
    log("  client loop to host 2 ->", out.strip())
    check(loop.returncode == 0 and "failed=0" in out, "the client kept every request to host 2")

    log("a message signed with another key")
    with open(wrong) as fh:
        wrong_key = bytes.fromhex(fh.read().strip())
    now = int(time.time() * 1e6)
    body_text = json.dumps({"v": 1, "origin": "intruder", "seq": now, "sent": now,
                            "what": {"type": "ban", "source": "198.18.203.1", "kind": "ban", "reason": "manual",
                                     "until": now + 600 * 10**6}})
    bad = json.dumps({"body": body_text, "sig": hmac.new(wrong_key, body_text.encode(), hashlib.sha256).hexdigest()})
    refused_before = fleet_status(h4)["refused"].get("bad-signature", 0)
    run(f.ns(f.names["att"], "python3", HERE, "publish", BROKER, "4222", "portcloak.fleet.ban", bad), timeout=10)
    check(wait(lambda: fleet_status(h4)["refused"].get("bad-signature", 0) > refused_before, 3),
          "host 4 refuses it, counted as bad-signature")
    check(not any(banned(d, "198.18.203.1") for d in daemons), "and no host bans what it says")

    log("the broker stopped for 10 s while host 1 bans a new scanner")
    f.stop_broker("n1")
    check(wait(lambda: not fleet_status(h1)["connected"], 8), "host 1 sees the broker gone")
    nmap_states(f, "-sS", "-p1-100", "-S", NET + "52", "-e", "eth0", HOSTS[0])
    check(banned(h1, NET + "52"), "host 1 still protects itself: the scanner is banned")
    check(wait(lambda: fleet_status(h1)["pending"] >= 1, 3), "the ban waits in host 1's queue")
    # A host that starts while the broker is away starts anyway.
    started = time.monotonic()
    check(h4.stop() == 0, "host 4 stops cleanly")
    h4.start(wait=20)
    check("fleet: cannot catch up" in h4.read_log(),
          "host 4 starts without the broker, after %.1f s, and says so" % (time.monotonic() - started))
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    check(not banned(h2, NET + "52"), "host 2 has not got it while the broker is away")
    f.broker("n1", 4222)
    check(wait(lambda: all(banned(d, NET + "52") for d in (h2, h3, h4)), 15),
          "once the broker is back, hosts 2, 3 and 4 get the ban")

    log("host 3 stopped; host 1 bans; host 3 started again")
    check(h3.stop() == 0, "host 3 stops cleanly")
    h1.ctl("ban", "198.18.201.1", "--for", "10m")
    time.sleep(1)
    h3.start()
    check(banned(h3, "198.18.201.1"), "host 3 caught up on the ban it missed before its queues opened")

    log("a three-node cluster, one node killed")
    for d in daemons:
        d.stop()
    f.stop_broker("n1")
    ports = [4222, 4223, 4224]
    for i, port in enumerate(ports):
        f.broker("c%d" % (i + 1), port, cluster=[p + 2000 for p in ports if p != port])
    time.sleep(3)  # the cluster elects its JetStream leader
    urls = ",".join("nats://%s:%d" % (BROKER, p) for p in ports)
    daemons = [f.daemon(i + 1, urls, key, extra='stream = "PORTCLOAK3"\nreplicas = 3') for i in range(4)]
    for d in daemons:
        d.start()
    check(wait(lambda: all(fleet_status(d)["connected"] for d in daemons), 20),
          "the four hosts are connected to the cluster")
    daemons[0].ctl("ban", "198.18.202.1", "--for", "10m")
    check(wait(lambda: all(banned(d, "198.18.202.1") for d in daemons), 5), "a ban reaches every host")
    f.stop_broker("c1", signal.SIGKILL)
    daemons[0].ctl("ban", "198.18.202.2", "--for", "10m")
    check(wait(lambda: all(banned(d, "198.18.202.2") for d in daemons[1:]), 20),
          "with node c1 killed, a new ban still reaches every host")
    for d in daemons:
        check(d.stop() == 0, "%s stops cleanly" % d.workdir.rsplit("/", 1)[-1])


def main():
    binary, workdir = sys.argv[1], sys.argv[2]
    os.makedirs(workdir, exist_ok=True)
    f = Fleet("pcf%d" % (os.getpid() % 100000), binary, workdir)
    started = time.monotonic()
    try:
        f.up()
        body(f)
        log("fleet passed in %.0f s" % (time.monotonic() - started))
    except (Failed, RuntimeError, KeyError, TypeError) as e:
        log("FAILED:", repr(e))
        for d in f.daemons:
            log("---- daemon log %s ----" % d.log)
            log(d.read_log())
        for name in ("n1", "c1", "c2", "c3"):
            p = os.path.join(workdir, name + ".log")
            if os.path.exists(p):
                log("---- %s ----" % p)
                with open(p) as fh:
                    log(fh.read()[-3000:])
        sys.exit(1)
    finally:
        f.down()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        publish(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(*sys.argv[2:5])
    else:
        main()
