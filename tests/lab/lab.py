#!/usr/bin/env python3
"""The lab: three network namespaces joined by veth pairs, for portcloak's
end-to-end tests and inline bench.

  attacker 198.18.1.2 fd5c:a11:1::2 --- 198.18.1.1 fd5c:a11:1::1 server
  client   198.18.2.2 fd5c:a11:2::2 --- 198.18.2.1 fd5c:a11:2::1 server

Only 198.18.0.0/15 and fd5c:a11::/32, no default routes, nothing in the
root namespace. Every namespace carries the caller's unique prefix and
`Lab.down()` removes them, whatever happened before.
"""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SERVER4, SERVER6 = "198.18.1.1", "fd5c:a11:1::1"
SERVER4_C, SERVER6_C = "198.18.2.1", "fd5c:a11:2::1"
ATTACKER4, ATTACKER6 = "198.18.1.2", "fd5c:a11:1::2"
CLIENT4 = "198.18.2.2"


def run(cmd, timeout=60, check=True, **kw):
    """Runs cmd (a list) with a timeout; returns CompletedProcess with text output."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    return r


class Lab:
    def __init__(self, prefix):
        self.p = prefix
        self.server, self.attacker, self.client = prefix + "-s", prefix + "-a", prefix + "-c"
        self.procs = []
        self.daemons = []

    def ns(self, ns, *cmd):
        return ["ip", "netns", "exec", ns] + list(cmd)

    def up(self, services=True):
        self.down()
        for ns in (self.server, self.attacker, self.client):
            run(["ip", "netns", "add", ns])
            run(self.ns(ns, "ip", "link", "set", "lo", "up"))
        p = self.p
        run(["ip", "link", "add", p + "-sa", "netns", self.server, "type", "veth",
             "peer", "name", p + "-as", "netns", self.attacker])
        run(["ip", "link", "add", p + "-sc", "netns", self.server, "type", "veth",
             "peer", "name", p + "-cs", "netns", self.client])
        for ns, dev, v4, v6 in (
            (self.server, p + "-sa", SERVER4 + "/24", SERVER6 + "/64"),
            (self.attacker, p + "-as", ATTACKER4 + "/24", ATTACKER6 + "/64"),
            (self.server, p + "-sc", SERVER4_C + "/24", SERVER6_C + "/64"),
            (self.client, p + "-cs", CLIENT4 + "/24", "fd5c:a11:2::2/64"),
        ):
            run(self.ns(ns, "ip", "link", "set", dev, "up"))
            run(self.ns(ns, "ip", "addr", "add", v4, "dev", dev))
            run(self.ns(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad"))
        if services:
            self.spawn(self.server, "python3", os.path.join(HERE, "services.py"))
            self.wait_port(self.client, SERVER4_C, 80)

    def spawn(self, ns, *cmd, **kw):
        proc = subprocess.Popen(self.ns(ns, *cmd), **kw)
        self.procs.append(proc)
        return proc

    def wait_port(self, ns, host, port, seconds=10):
        code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()"
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if run(self.ns(ns, "python3", "-c", code, host, str(port)), timeout=5, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("port %s:%d never answered" % (host, port))

    def can_connect(self, ns, host, port, timeout=1.5):
        code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), %s).close()\n"
                "except OSError: sys.exit(1)" % timeout)
        return run(self.ns(ns, "python3", "-c", code, host, str(port)), timeout=10, check=False).returncode == 0

    def client_run(self, *args, timeout=120):
        return run(self.ns(self.client, "python3", os.path.join(HERE, "client.py"), *args),
                   timeout=timeout, check=False)

    def down(self):
        teardown(self.procs, (self.server, self.attacker, self.client))
        self.procs = []


def teardown(procs, namespaces):
    """Kills procs and everything left in the namespaces, and deletes them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def port_states(xml):
    """{state: count} over every port of nmap's XML output (-oX -)."""
    import xml.etree.ElementTree as ET
    states = {}
    for host in ET.fromstring(xml).iter("host"):
        for extra in host.iter("extraports"):
            states[extra.get("state")] = states.get(extra.get("state"), 0) + int(extra.get("count"))
        for port in host.iter("port"):
            s = port.find("state").get("state")
            states[s] = states.get(s, 0) + 1
    return states


class Daemon:
    """portcloak run in the lab's server namespace, with its own rules file."""

    def __init__(self, lab, binary, workdir, extra_rules="", daemon_keys=""):
        self.lab, self.binary, self.workdir = lab, binary, workdir
        lab.daemons.append(self)
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "portcloak.sock")
        self.state = os.path.join(workdir, "state.json")
        self.rules = os.path.join(workdir, "rules.toml")
        self.log = os.path.join(workdir, "daemon.log")
        self.events = os.path.join(workdir, "events.jsonl")
        with open(self.rules, "w") as f:
            f.write(extra_rules)
            f.write('\n[daemon]\nstate_file = "%s"\nsocket = "%s"\nevents = "%s"\nsummary_interval = "5s"\n%s\n'
                    % (self.state, self.socket, self.events, daemon_keys))
        self.proc = None

    def start(self, wait=10):
        logf = open(self.log, "a")
        self.proc = self.lab.spawn(self.lab.server, self.binary, "run", "-c", self.rules,
                                   stdout=logf, stderr=subprocess.STDOUT)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("portcloak run exited %d:\n%s" % (self.proc.returncode, self.read_log()))
            if self.ctl("status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("portcloak run did not answer on its socket:\n" + self.read_log())

    def ctl(self, *args, check=True):
        return run(self.lab.ns(self.lab.server, self.binary, *args, "--socket", self.socket),
                   timeout=20, check=check)

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def bans(self):
        return json.loads(self.ctl("bans", "--json").stdout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Failed(Exception):
    """A check of an end-to-end test failed."""


def check(cond, what):
    """Raises Failed(what) unless cond; logs what held."""
    if not cond:
        raise Failed(what)
    log("  ok:", what)


def main(prefix, name, body):
    """The command line of an end-to-end script (SCRIPT BINARY WORKDIR):
    runs body(lab, binary, workdir) in a fresh lab whose namespaces start
    with `prefix`, tears it down whatever happens, and exits 1 on the first
    failed check, after the logs of the daemons it started."""
    binary, workdir = sys.argv[1], sys.argv[2]
    os.makedirs(workdir, exist_ok=True)
    lab = Lab("%s%d" % (prefix, os.getpid() % 100000))
    started = time.monotonic()
    try:
        lab.up()
        body(lab, binary, workdir)
        log("%s passed in %.0f s" % (name, time.monotonic() - started))
    except Failed as e:
        log("FAILED:", e)
        for d in lab.daemons:
            log("---- daemon log %s ----" % d.log)
            log(d.read_log())
        sys.exit(1)
    finally:
        lab.down()
