"""Micro-benchmark of the MQTT-SN codec's hot path (PUBLISH); run by hand, no assertions.

    python -m tests.bench.bench_codec [--seconds 1.0]

Prints decodes/s and encodes/s per CPU-second (``time.process_time``, best of 5 rounds) for a few
PUBLISH shapes and the ack that flows back, and what building the message object costs, so a
change to ``gateway/protocol/codec.py`` can be compared.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import astuple
from functools import partial

from gateway.protocol import (
    Message,
    Puback,
    Publish,
    QoS,
    ReturnCode,
    TopicIdType,
    decode,
    encode,
    short_name_to_id,
)

CASES: dict[str, Message] = {
    "PUBLISH QoS 1, 20 B": Publish(1, b"x" * 20, QoS.AT_LEAST_ONCE, msg_id=7),
    "PUBLISH QoS 0, 4 B": Publish(1, b"21.5"),
    "PUBLISH QoS -1 short name": Publish(
        short_name_to_id("t1"), b"ON", QoS.MINUS_ONE, topic_id_type=TopicIdType.SHORT_NAME
    ),
    "PUBLISH QoS 1, 1000 B (long form)": Publish(1, b"x" * 1000, QoS.AT_LEAST_ONCE, msg_id=7),
    "PUBACK": Puback(1, 7, ReturnCode.ACCEPTED),
}


def _rate(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Best calls per CPU-second of ``fn`` over ``rounds`` rounds (the box may be busy)."""
    batch = 1000
    best = 0.0
    for _ in range(rounds):
        calls = 0
        start = time.process_time()
        while True:
            for _ in range(batch):
                fn()
            calls += batch
            elapsed = time.process_time() - start
            if elapsed >= seconds / rounds:
                break
        best = max(best, calls / elapsed)
    return best


def main() -> None:
    """Run every case and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU time per measurement")
    args = parser.parse_args()
    print(f"{'case':36} {'decodes/s':>12} {'encodes/s':>12} {'construct/s':>12}")
    for name, msg in CASES.items():
        frame = encode(msg)
        dec = _rate(partial(decode, frame), args.seconds)
        enc = _rate(partial(encode, msg), args.seconds)
        # What building the message costs the caller (frozen dataclass __init__ + validation).
        con = _rate(partial(type(msg), *astuple(msg)), args.seconds)  # type: ignore[call-overload]
        print(f"{name:36} {dec:12,.0f} {enc:12,.0f} {con:12,.0f}")


if __name__ == "__main__":
    main()
