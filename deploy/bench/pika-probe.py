#!/usr/bin/env python3
"""Round-trip probes through a third client library, pika (Python), against two brokers.

compare.sh measures pipelined loads (100 confirms in flight, unlimited prefetch). A slow
client that waits for each answer measures something else: the time of one trip through the
broker. Three probes, each run against every broker alternately for several rounds:

  sync-confirm  one publisher, persistent 1 KiB messages to a durable queue, publisher
                confirms, each publish waits for its confirm (pika's BlockingChannel)
  get           basic.get of a 1 KiB transient message, then basic.ack (not awaited)
  consume       a publisher thread (transient 1 KiB, no confirms) and a consumer with
                prefetch 100 that acks every message; end-to-end latency from a timestamp
                in the body

Prints one JSON object per run, then a table of medians and the ratio of the second broker to
the first. Needs `pip install pika`; the brokers must already run.

Usage: pika-probe.py --broker rabbitmq=amqp://guest:guest@127.0.0.1:25710/%2f \
                     --broker raftmq=amqp://guest:guest@127.0.0.1:25720/%2f [--rounds 3] [--seconds 5]
"""
import argparse
import json
import statistics
import struct
import threading
import time

import pika

BODY = b"x" * 1024


def percentile_ms(samples, p):
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def fresh_queue(channel, name):
    channel.queue_delete(name)
    channel.queue_declare(name, durable=True)


def round_trips(params, queue, seconds, setup, trip):
    """Times `trip(channel)` over and over; a trip that returns False is not counted."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    fresh_queue(ch, queue)
    setup(ch)
    trips = []
    start = time.time()
    while time.time() - start < seconds:
        t = time.perf_counter()
        if trip(ch):
            trips.append(time.perf_counter() - t)
    elapsed = time.time() - start
    ch.queue_delete(queue)
    conn.close()
    return len(trips) / elapsed, trips


def sync_confirm(params, queue, seconds):
    persistent = pika.BasicProperties(delivery_mode=2)

    def publish(ch):
        ch.basic_publish("", queue, BODY, persistent)  # returns once confirmed
        return True

    return round_trips(params, queue, seconds, lambda ch: ch.confirm_delivery(), publish)


def get(params, queue, seconds):
    def get_one(ch):
        method, _, _ = ch.basic_get(queue)
        if method is None:  # refill; this trip does not count
            for _ in range(2000):
                ch.basic_publish("", queue, BODY)
            return False
        ch.basic_ack(method.delivery_tag)
        return True

    return round_trips(params, queue, seconds, lambda ch: None, get_one)


def consume(params, queue, seconds):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    fresh_queue(ch, queue)
    stop_at = time.time() + seconds

    def produce():
        pconn = pika.BlockingConnection(params)
        pch = pconn.channel()
        while time.time() < stop_at:
            for _ in range(100):
                pch.basic_publish("", queue, struct.pack(">d", time.time()) + BODY[8:])
            pconn.process_data_events(0)
        pconn.close()

    latencies = []

    def on_message(channel, method, _props, body):
        latencies.append(time.time() - struct.unpack(">d", body[:8])[0])
        channel.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=100)
    ch.basic_consume(queue, on_message)
    producer = threading.Thread(target=produce)
    start = time.time()
    producer.start()
    while time.time() < stop_at:
        conn.process_data_events(0.1)
    elapsed = time.time() - start
    producer.join()
    ch.queue_delete(queue)
    conn.close()
    return len(latencies) / elapsed, latencies


PROBES = {"sync-confirm": sync_confirm, "get": get, "consume": consume}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", action="append", required=True, metavar="NAME=URI",
                    help="a broker to probe (give two: the ratio is second / first)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per probe and broker")
    ap.add_argument("--seconds", type=float, default=5, help="length of one run")
    ap.add_argument("--probes", default="sync-confirm,get,consume",
                    help="comma-separated: " + ", ".join(PROBES))
    args = ap.parse_args()
    if any("=" not in b for b in args.broker):
        ap.error("--broker takes NAME=URI, e.g. raftmq=amqp://guest:guest@127.0.0.1:5672/%2f")
    brokers = [b.split("=", 1) for b in args.broker]
    probes = args.probes.split(",")
    for p in probes:
        if p not in PROBES:
            ap.error(f"unknown probe {p!r}; known: {', '.join(PROBES)}")
    runs = {}
    for probe in probes:
        for _ in range(args.rounds):
            for name, uri in brokers:
                try:
                    rate, samples = PROBES[probe](pika.URLParameters(uri),
                                                  "pika-probe-" + probe, args.seconds)
                except pika.exceptions.AMQPError as e:
                    raise SystemExit(f"{name} ({uri}): {type(e).__name__} {e}")
                row = {"probe": probe, "broker": name, "rate": rate,
                       "p50_ms": percentile_ms(samples, 0.50),
                       "p99_ms": percentile_ms(samples, 0.99)}
                print(json.dumps(row), flush=True)
                runs.setdefault((probe, name), []).append(row)
    names = [n for n, _ in brokers]
    print(f"\n{'probe':<14}" + "".join(f"{n + ' /s (p50, p99 ms)':>34}" for n in names)
          + ("   ratio /s, p50" if len(names) == 2 else ""))
    for probe in probes:
        medians = []
        for name in names:
            rows = runs[(probe, name)]
            medians.append(tuple(statistics.median(r[k] for r in rows)
                                 for k in ("rate", "p50_ms", "p99_ms")))
        line = f"{probe:<14}" + "".join(f"{m[0]:>14.0f} ({m[1]:6.2f}, {m[2]:6.2f})   "
                                         for m in medians)
        if len(medians) == 2:
            line += f"{medians[1][0] / medians[0][0]:6.2f}x {medians[1][1] / medians[0][1]:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
