"""Micro-benchmark: recvfrom/sendto loops against transports._mmsg; run by hand, no assertions.

    python -m tests.bench.bench_mmsg [--rounds 200]

Prints the CPU time per datagram (``time.process_time``, best of 5 runs of ``--rounds`` rounds,
the variants taking turns round by round)
on loopback: draining a socket that 100 senders filled, with ``recvfrom`` in a loop or with
``recv_batch`` (256 per call, as the UDP transport reads), each bare and with the sender looked up
in a dict as the transport does; and sending to 100 distinct sockets with ``sendto`` in a loop
or ``send_batch``. Only the draining or the sending is timed.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable

from transports import _mmsg
from transports.udp_endpoints import sockaddr_bytes

PEERS = 100
PER_PEER = 10  # datagrams from (or to) each peer per round: 1000 per round
BURST = 256
BUFSIZE = 1025
FRAME = bytes.fromhex("0A 0C 00 00 01 00 00 68 69 21")  # a PUBLISH QoS 0


def _socket(rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def _compare(
    variants: dict[str, Callable[[], tuple[float, int]]], rounds: int, runs: int = 5
) -> dict[str, float]:
    """Best ns of CPU per datagram of each variant over ``runs`` runs of ``rounds`` rounds.

    The variants take turns round by round, so that whatever else the machine runs weighs on
    each alike; the best run of each is kept.
    """
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(runs):
        cpu = dict.fromkeys(variants, 0.0)
        datagrams = dict.fromkeys(variants, 0)
        for _ in range(rounds):
            for name, run_round in variants.items():
                spent, count = run_round()
                cpu[name] += spent
                datagrams[name] += count
        for name in variants:
            best[name] = min(best[name], cpu[name] / datagrams[name] * 1e9)
    return best


def bench_receive(rounds: int) -> dict[str, float]:
    """Per-datagram CPU of draining a socket filled by 100 senders, four ways."""
    receiver = _socket(rcvbuf=8 * 1024 * 1024)
    senders = [_socket() for _ in range(PEERS)]
    target = receiver.getsockname()
    fd = receiver.fileno()
    recvfrom = receiver.recvfrom
    recv_batch = _mmsg.recv_batch

    def fill() -> int:
        for _ in range(PER_PEER):
            for sender in senders:
                sender.sendto(FRAME, target)
        return PEERS * PER_PEER

    def recvfrom_loop(lookup: bool) -> Callable[[], tuple[float, int]]:
        cache: dict[object, object] = {}

        def run() -> tuple[float, int]:
            sent = fill()
            got = 0
            start = time.process_time()
            while True:  # wake-ups of at most BURST datagrams, as the transport reads
                count = 0
                while count < BURST:
                    try:
                        _, addr = recvfrom(BUFSIZE)
                    except BlockingIOError:
                        break
                    count += 1
                    if lookup and cache.get(addr) is None:
                        cache[addr] = addr
                got += count
                if count < BURST:
                    break
            spent = time.process_time() - start
            assert got == sent, (got, sent)
            return spent, got

        return run

    def batch(lookup: bool) -> Callable[[], tuple[float, int]]:
        cache: dict[object, object] = {}

        def run() -> tuple[float, int]:
            sent = fill()
            got = 0
            start = time.process_time()
            while True:
                items = recv_batch(fd, BURST, BUFSIZE)
                for _, raw in items:
                    if lookup and cache.get(raw) is None:
                        cache[raw] = raw
                got += len(items)
                if len(items) < BURST:
                    break
            spent = time.process_time() - start
            assert got == sent, (got, sent)
            return spent, got

        return run

    try:
        return _compare(
            {
                "recvfrom loop": recvfrom_loop(False),
                "recvfrom loop + address dict": recvfrom_loop(True),
                "recv_batch(256)": batch(False),
                "recv_batch(256) + raw-address dict": batch(True),
            },
            rounds,
        )
    finally:
        for sock in (receiver, *senders):
            sock.close()


def bench_send(rounds: int) -> dict[str, float]:
    """Per-datagram CPU of sending to 100 distinct loopback sockets, sendto vs send_batch."""
    sender = _socket()
    receivers = [_socket(rcvbuf=256 * 1024) for _ in range(PEERS)]
    addrs = [r.getsockname() for r in receivers]
    raws = [sockaddr_bytes(a) for a in addrs]
    fd = sender.fileno()
    sendto = sender.sendto
    send_batch = _mmsg.send_batch
    plain = [(FRAME, addrs[i % PEERS]) for i in range(PEERS * PER_PEER)]
    raw_items = [(FRAME, raws[i % PEERS]) for i in range(PEERS * PER_PEER)]

    def drain_all() -> None:
        for receiver in receivers:
            _drain(receiver)

    def sendto_loop() -> tuple[float, int]:
        start = time.process_time()
        for frame, addr in plain:
            sendto(frame, addr)
        spent = time.process_time() - start
        drain_all()
        return spent, len(plain)

    def batched(size: int) -> Callable[[], tuple[float, int]]:
        chunks = [raw_items[i : i + size] for i in range(0, len(raw_items), size)]

        def run() -> tuple[float, int]:
            start = time.process_time()
            sent = 0
            for chunk in chunks:
                sent += send_batch(fd, chunk)
            spent = time.process_time() - start
            assert sent == len(raw_items), sent
            drain_all()
            return spent, sent

        return run

    peers = {i: raws[i] for i in range(PEERS)}  # as a transport would keep them
    outgoing = [(i % PEERS, FRAME) for i in range(PEERS * PER_PEER)]  # (address, frame)

    def built_batch() -> tuple[float, int]:
        # What a send_many() would add: a dict look-up and a tuple per frame, then one call.
        start = time.process_time()
        items = [(frame, peers[address]) for address, frame in outgoing]
        sent = send_batch(fd, items)
        spent = time.process_time() - start
        assert sent == len(items), sent
        drain_all()
        return spent, sent

    try:
        return _compare(
            {
                "sendto loop": sendto_loop,
                "send_batch + building its items": built_batch,
                "send_batch, 1000 per call": batched(1000),
                "send_batch, 64 per call": batched(64),
                "send_batch, 8 per call": batched(8),
            },
            rounds,
        )
    finally:
        for sock in (sender, *receivers):
            sock.close()


def main() -> None:
    """Run both and print ns of CPU per datagram."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="rounds of 1000 datagrams per run")
    args = parser.parse_args()
    for title, results in (
        ("receive (1000 datagrams from 100 senders)", bench_receive(args.rounds)),
        ("send (1000 datagrams to 100 sockets)", bench_send(args.rounds)),
    ):
        print(title)
        base = next(iter(results.values()))
        for name, ns in results.items():
            print(f"  {name:38} {ns:8.0f} ns/datagram  {ns / base:6.0%}")


if __name__ == "__main__":
    main()
