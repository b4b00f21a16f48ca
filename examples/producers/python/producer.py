#!/usr/bin/env python3
"""Publishes one userstatus event to Kafka (confluent-kafka + msgpack).

    usage: producer.py BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]
    e.g.   producer.py 127.0.0.1:9092 user_status active 42 dnd

The value is the msgpack map of schemas/events.md: {"type", "user", "time" (Unix ms), "state"
(optional), "v": 1}. The key is the user id and the partitioner is murmur2_random (the Java client's),
so every producer, in any language, puts one user's events on the same partition. Exits 0 only after
the broker acknowledged the event (acks=all, idempotent producer).

    pip install confluent-kafka msgpack
"""
import sys
import time

import msgpack
from confluent_kafka import Producer


def main(argv):
    if not 5 <= len(argv) <= 7:
        print("usage: %s BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]" % argv[0], file=sys.stderr)
        return 2
    brokers, topic, type_, user = argv[1:5]
    state = argv[5] if len(argv) > 5 and argv[5] != "-" else None
    time_ms = int(argv[6]) if len(argv) > 6 else int(time.time() * 1000)

    event = {"type": type_, "user": user, "time": time_ms}
    if state is not None:
        event["state"] = state
    event["v"] = 1
    value = msgpack.packb(event, use_bin_type=True)  # str as msgpack str, never bin

    producer = Producer({
        "bootstrap.servers": brokers,
        "partitioner": "murmur2_random",  # Java-compatible: same partition per user in every client
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 10000,
    })
    result = {}

    def on_delivery(err, msg):
        result["err"] = err
        if err is None:
            print("delivered to %s [%d] at offset %d" % (msg.topic(), msg.partition(), msg.offset()),
                  file=sys.stderr)

    producer.produce(topic, key=user.encode(), value=value, on_delivery=on_delivery)
    producer.flush(15)
    if result.get("err") is not None or "err" not in result:
        print("delivery failed: %s" % result.get("err", "no delivery report"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
