"""Student replicas found through a real DNS server, as a gateway pod finds them through CoreDNS.

Debian's dnsmasq answers a headless Service's name with one loopback address per `kdgate engine --enable-lora`
replica (on Linux all of 127/8 is loopback, so each replica listens on the same port at its own address, as pods
do). The gateway runs as `kdgate serve` in a process of its own and resolves with the system resolver, the one a
pod uses: its /etc/resolv.conf names dnsmasq, bind-mounted in a private mount namespace so that nothing else on the
machine sees it. glibc asks a nameserver on port 53 only, so dnsmasq listens on port 53 of a loopback address of
its own. A promoted adapter goes onto every replica the name resolves to; a replica added to the answer gets it
within a few `students.reconcile_interval_s`, and no request fails meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import needs
from tests.conftest import ROOT, free_port, start_engine_server, stop, wait_until_up
from tests.gateway.students.test_lora_promotion import RUNTIME_LORA, listed
from tests.gateway.students.test_promotion import admin, switch_under_load

pytestmark = pytest.mark.slow

NAME = "kdgate-student-headless.test"
REPLICA_ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
RECONCILE_INTERVAL_S = 0.5
LOADED_WITHIN_S = 8 * RECONCILE_INTERVAL_S  # a few rounds: each lists every replica's models, and loading takes time
ANSWER_DEADLINE_S = 20.0  # dnsmasq's answer, after a start or a SIGHUP: a broken setup, not a slow box


@dataclass
class DnsServer:
    """dnsmasq answering `NAME` from a hosts file that it reads again on SIGHUP."""

    hosts: Path
    process: subprocess.Popen
    resolver: list[str]  # a command prefix: what follows it resolves names through this server

    def answer(self, addresses: list[str]) -> None:
        """`NAME` resolves to `addresses` once this returns (checked the way the gateway resolves)."""
        staged = self.hosts.with_suffix(".new")
        staged.write_text("".join(f"{address} {NAME}\n" for address in addresses))
        staged.replace(self.hosts)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while (got := self.resolve()) != sorted(addresses):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{NAME} resolves to {got}, not {sorted(addresses)}; dnsmasq: "
                            f"{self.log()}", pytrace=False)
            time.sleep(0.1)

    def resolve(self) -> list[str]:
        """The addresses glibc's getaddrinfo finds for `NAME` behind `resolver` (`getent ahosts` calls it)."""
        done = subprocess.run([*self.resolver, "getent", "ahosts", NAME], capture_output=True, text=True, timeout=30)
        if done.returncode not in (0, 2):  # 2: the name does not resolve
            needs.missing(f"a mount namespace for the gateway's own /etc/resolv.conf ({done.stderr.strip()})",
                          "run the tests as root with CAP_SYS_ADMIN, or where unprivileged user namespaces are "
                          "allowed (sysctl -w kernel.unprivileged_userns_clone=1)")
        return sorted({line.split()[0] for line in done.stdout.splitlines()})

    def log(self) -> str:
        return (self.hosts.parent / "dnsmasq.log").read_text().strip()[-2000:]


def private_resolver(resolv_conf: Path, nsswitch_conf: Path) -> list[str]:
    """A command prefix: the program after it runs with these files as its /etc/resolv.conf and /etc/nsswitch.conf,
    in a mount namespace of its own (a user namespace too when not root). nsswitch.conf is `hosts: files dns`, as in
    a Debian-based image, so that a desktop's `resolve` or `mdns` module does not answer instead of the resolver."""
    as_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    mounts = 'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@"'
    return ["unshare", *as_user, "--mount", "sh", "-c", mounts, "sh", str(resolv_conf), str(nsswitch_conf)]


@pytest.fixture
def dns_server(tmp_path) -> Iterator[DnsServer]:
    directory = tmp_path / "dns"
    directory.mkdir()
    hosts = directory / "hosts"
    hosts.write_text("")
    # Port 53 on a loopback address no other resolver uses (systemd-resolved holds 127.0.0.53 and .54).
    address = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    (directory / "resolv.conf").write_text(f"nameserver {address}\noptions timeout:1 attempts:3\n")
    (directory / "nsswitch.conf").write_text("hosts: files dns\n")
    as_root = ["--user=root"] if os.geteuid() == 0 else []  # not `nobody`, which cannot read tmp_path
    # Authoritative for .test (`--local`), forwarding nothing: a name it does not hold is NXDOMAIN, an AAAA query for
    # one that has only A records is answered empty, as CoreDNS answers for a cluster's names.
    command = [needs.tool("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--local=/test/", f"--addn-hosts={hosts}", f"--listen-address={address}", "--bind-interfaces",
               "--port=53", "--pid-file=", "--log-facility=-", "--log-queries", *as_root]
    with (directory / "dnsmasq.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = DnsServer(hosts, process, private_resolver(directory / "resolv.conf", directory / "nsswitch.conf"))
    deadline = time.monotonic() + ANSWER_DEADLINE_S
    while "started," not in server.log() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # dnsmasq binds its socket before it logs that it started
    if process.poll() is not None:
        if "Permission denied" in server.log():
            needs.missing(f"permission to bind port 53, which glibc's resolver asks (dnsmasq: {server.log()})",
                          "run the tests as root, or sysctl -w net.ipv4.ip_unprivileged_port_start=53")
        pytest.fail(f"dnsmasq exited: {server.log()}", pytrace=False)
    try:
        yield server
    finally:
        stop(process)


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen


def serve_through(dns: DnsServer, workdir: Path, student_url: str, teacher) -> Gateway:
    """`kdgate serve` resolving through `dns`, its student named by `student_url`, as the chart configures it."""
    config = {
        "student": {"kind": "http", "base_url": student_url, "model": "demo-student", "replica_urls": [student_url],
                    "replicas_from_dns": True},
        "teacher": {"kind": "http", "base_url": teacher.base_url, "model": teacher.model},
        "routing": {"policy": "student_only", "handoff": {"enabled": False}},
        "shadow": {"enabled": False, "store_url": f"sqlite:///{workdir / 'store.sqlite3'}"},
        "students": {"enabled": True, "poll_interval_s": 0.2, "reconcile_interval_s": RECONCILE_INTERVAL_S},
        "log_level": "warning",
    }
    (workdir / "kdgate.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    with (workdir / "gateway.log").open("w") as log:
        process = subprocess.Popen([*dns.resolver, sys.executable, "-m", "kdgate.cli", "serve", "--config",
                                    str(workdir / "kdgate.yaml"), "--port", str(port)], cwd=ROOT,
                                   env=clean, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/readyz", process, timeout=120)
    return Gateway(url, process)


def test_a_replica_added_to_the_dns_answer_gets_the_adapter_and_no_request_fails(demo_dirs, engine_server,
                                                                                  demo_adapter, dns_server, tmp_path):
    """Two replicas behind the name get the promoted adapter and a third, listening but not in the answer, does
    not; once dnsmasq answers with the third too (a pod that joined by scaling), the gateway loads the adapter
    there at a reconciliation round, while three clients stream through the gateway without a failure."""
    port = free_port()
    replicas = []
    gateway = None
    try:
        def start(address: str) -> None:
            replicas.append(start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA,
                                                host=address, port=port))

        with ThreadPoolExecutor(len(REPLICA_ADDRESSES)) as pool:  # the third too, outside the answer for now
            list(pool.map(start, REPLICA_ADDRESSES))
        replicas.sort(key=lambda replica: replica.base_url)
        urls = [replica.base_url for replica in replicas]
        dns_server.answer(REPLICA_ADDRESSES[:2])
        gateway = serve_through(dns_server, tmp_path, f"http://{NAME}:{port}/v1", engine_server)

        assert admin(gateway, "POST", "", {"name": "v1", "adapter_path": str(demo_adapter)}).status_code == 201
        promoted = admin(gateway, "POST", "/v1/promote")
        time.sleep(3 * RECONCILE_INTERVAL_S)  # reconciliation rounds, which must leave the third replica alone
        before = ["demo-student@v1" in listed(url) for url in urls]
        joined = {}

        def answer_with_the_third() -> None:
            dns_server.answer(REPLICA_ADDRESSES)
            answered = time.monotonic()
            while "demo-student@v1" not in listed(urls[2]) and time.monotonic() - answered < 2 * LOADED_WITHIN_S:
                time.sleep(0.05)
            joined["loaded_after_s"] = time.monotonic() - answered

        seen, failures = switch_under_load(gateway, [(answer_with_the_third, "v1")])
        after = ["demo-student@v1" in listed(url) for url in urls]
    finally:
        if gateway is not None:
            stop(gateway.process)
        for replica in replicas:
            stop(replica.process)
    assert promoted.status_code == 200, promoted.text
    assert before == [True, True, False]
    assert after == [True, True, True], joined
    assert joined["loaded_after_s"] < LOADED_WITHIN_S, joined  # measured: 0.6 to 1.5 s on 2 busy cores
    assert failures == [] and {version for _, _, version, _ in seen} == {"v1"}
