#!/usr/bin/env node
// Publishes one userstatus event to Kafka (kafkajs + @msgpack/msgpack).
//
//   usage: node producer.js BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]
//   e.g.   node producer.js 127.0.0.1:9092 user_status active 42 dnd
//
// The value is the msgpack map of schemas/events.md: {"type", "user", "time" (Unix ms), "state"
// (optional), "v": 1}. The key is the user id and the partitioner is kafkajs' JavaCompatiblePartitioner
// (murmur2, as the Java client and librdkafka's murmur2_random), so every producer, in any language,
// puts one user's events on the same partition. Exits 0 only after the broker acknowledged the event
// (acks=all, idempotent producer).
'use strict';
const { Kafka, Partitioners, logLevel } = require('kafkajs');
const { encode } = require('@msgpack/msgpack');

async function main(argv) {
  if (argv.length < 4 || argv.length > 6) {
    console.error('usage: producer.js BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]');
    return 2;
  }
  const [brokers, topic, type, user] = argv;
  const state = argv.length > 4 && argv[4] !== '-' ? argv[4] : undefined;
  const time = argv.length > 5 ? Number(argv[5]) : Date.now();
  if (!Number.isSafeInteger(time) || time < 0) {
    console.error(`TIME_MS must be a non-negative integer, not '${argv[5]}'`);
    return 2;
  }

  // The event: a msgpack map, keys in the canonical order of schemas/events.md. A whole-number JS
  // number is encoded as a msgpack integer (a float would be dead-lettered as wrong_field_type).
  const event = { type, user, time };
  if (state !== undefined) event.state = state;
  event.v = 1;
  const value = Buffer.from(encode(event));

  const kafka = new Kafka({ clientId: 'userstatus-example', brokers: brokers.split(','), logLevel: logLevel.ERROR });
  const producer = kafka.producer({
    createPartitioner: Partitioners.JavaCompatiblePartitioner,
    idempotent: true,
    maxInFlightRequests: 1,
  });
  await producer.connect();
  try {
    const [md] = await producer.send({ topic, acks: -1, timeout: 10000, messages: [{ key: user, value }] });
    console.error(`delivered to ${md.topicName} [${md.partition}] at offset ${md.baseOffset}`);
  } finally {
    await producer.disconnect();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error('delivery failed:', err.message || err);
    process.exit(1);
  },
);
