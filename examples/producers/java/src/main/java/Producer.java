/*
 * Publishes one userstatus event to Kafka (kafka-clients + msgpack-core).
 *
 *   usage: Producer BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]
 *   e.g.   Producer 127.0.0.1:9092 user_status active 42 dnd
 *
 * The value is the msgpack map of schemas/events.md: {"type", "user", "time" (Unix ms), "state"
 * (optional), "v": 1}. The key is the user id; the Java client's default partitioner hashes keys with
 * murmur2, which is what librdkafka calls murmur2_random, so every producer, in any language, puts one
 * user's events on the same partition. Exits 0 only after the broker acknowledged the event
 * (acks=all, idempotent producer).
 */
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;

public final class Producer {
    public static void main(String[] args) throws Exception {
        if (args.length < 4 || args.length > 6) {
            System.err.println("usage: Producer BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]");
            System.exit(2);
        }
        String brokers = args[0], topic = args[1], type = args[2], user = args[3];
        String state = args.length > 4 && !args[4].equals("-") ? args[4] : null;
        long timeMs = args.length > 5 ? Long.parseLong(args[5]) : System.currentTimeMillis();

        // The event: a msgpack map, keys in the canonical order of schemas/events.md.
        MessageBufferPacker pk = MessagePack.newDefaultBufferPacker();
        pk.packMapHeader(state != null ? 5 : 4);
        pk.packString("type").packString(type);
        pk.packString("user").packString(user);
        pk.packString("time").packLong(timeMs);
        if (state != null) pk.packString("state").packString(state);
        pk.packString("v").packInt(1);
        pk.close();
        byte[] value = pk.toByteArray();

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "10000");
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "10000");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        // No partitioner setting: for a keyed record the default is murmur2(key) % partitions.

        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            byte[] key = user.getBytes(StandardCharsets.UTF_8);
            RecordMetadata md = producer.send(new ProducerRecord<>(topic, key, value)).get();
            System.err.printf("delivered to %s [%d] at offset %d%n", md.topic(), md.partition(), md.offset());
        } catch (java.util.concurrent.ExecutionException e) {
            System.err.println("delivery failed: " + e.getCause());
            System.exit(1);
        }
    }
}
