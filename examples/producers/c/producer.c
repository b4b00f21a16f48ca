/* Publishes one userstatus event to Kafka (librdkafka + msgpack-c).
 *
 *   usage: producer BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]
 *   e.g.   producer 127.0.0.1:9092 user_status active 42 dnd
 *
 * The value is the msgpack map of schemas/events.md: {"type", "user", "time" (Unix ms), "state"
 * (optional), "v": 1}. The message key is the user id and the partitioner is murmur2_random (the
 * Java client's), so every producer, in any language, puts one user's events on the same partition.
 * The program waits for the broker's acknowledgement (acks=all, idempotent producer) and exits 0
 * only when the event was stored. Recognisable from librdkafka's examples/producer.c, on purpose.
 */
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* Milliseconds librdkafka keeps retrying before it fails the event. */
#define MESSAGE_TIMEOUT_MS "10000"
/* Milliseconds to wait for the delivery report (longer than the above). */
#define FLUSH_TIMEOUT_MS 15000

static int delivered; /* 1 when the delivery report said the broker stored the event. */

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(m->err));
        return;
    }
    fprintf(stderr, "delivered to %s [%d] at offset %lld\n", rd_kafka_topic_name(m->rkt),
            (int)m->partition, (long long)m->offset);
    delivered = 1;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static int set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[512];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "%s=%s: %s\n", name, value, err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 7) {
        fprintf(stderr,
                "usage: %s BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]\n"
                "  TYPE: active | online | delete; STATE '-' sends no state\n",
                argv[0]);
        return 2;
    }
    const char *brokers = argv[1], *topic = argv[2], *type = argv[3], *user = argv[4];
    const char *state = argc > 5 && strcmp(argv[5], "-") != 0 ? argv[5] : NULL;
    int64_t time_ms = now_ms();
    if (argc > 6) {
        char *end;
        errno = 0;
        time_ms = strtoll(argv[6], &end, 10);
        if (errno || *end || end == argv[6] || time_ms < 0) {
            fprintf(stderr, "TIME_MS must be a non-negative integer, not '%s'\n", argv[6]);
            return 2;
        }
    }

    /* The event: a msgpack map, keys in the canonical order of schemas/events.md. */
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, state ? 5 : 4);
    pack_str(&pk, "type");
    pack_str(&pk, type);
    pack_str(&pk, "user");
    pack_str(&pk, user);
    pack_str(&pk, "time");
    msgpack_pack_int64(&pk, time_ms);
    if (state) {
        pack_str(&pk, "state");
        pack_str(&pk, state);
    }
    pack_str(&pk, "v");
    msgpack_pack_int(&pk, 1);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", brokers) || set(conf, "partitioner", "murmur2_random") ||
        set(conf, "enable.idempotence", "true") || set(conf, "acks", "all") ||
        set(conf, "message.timeout.ms", MESSAGE_TIMEOUT_MS)) {
        rd_kafka_conf_destroy(conf);
        msgpack_sbuffer_destroy(&sbuf);
        return 1;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "cannot create the producer: %s\n", err);
        msgpack_sbuffer_destroy(&sbuf);
        return 1;
    }

    rd_kafka_resp_err_t e =
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(user, strlen(user)),
                          RD_KAFKA_V_VALUE(sbuf.data, sbuf.size),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    msgpack_sbuffer_destroy(&sbuf);
    if (e) {
        fprintf(stderr, "cannot produce to %s: %s\n", topic, rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return 1;
    }
    if (rd_kafka_flush(rk, FLUSH_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        fprintf(stderr, "no acknowledgement from %s within %d ms\n", brokers, FLUSH_TIMEOUT_MS);
    rd_kafka_destroy(rk);
    return delivered ? 0 : 1;
}
