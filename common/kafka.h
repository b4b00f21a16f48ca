/* Kafka set-up shared by the worker and the query service: client configuration, topic creation
 * and the event producer's settings. */
#ifndef US_KAFKA_H
#define US_KAFKA_H

#include "config.h"

#include <librdkafka/rdkafka.h>

/* A client configuration with bootstrap.servers, logging through us_log, then every
 * kafka.properties entry (so users can override anything). Returns NULL with err set when
 * librdkafka refuses a property (the message names it). */
rd_kafka_conf_t *us_kafka_conf_new(const us_config *cfg, char *err, size_t errlen);

/* Sets one property, reporting librdkafka's refusal in err. Returns 0 or -1. */
int us_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                      size_t errlen);

/* Sets each of n name/value defaults unless the user set that property in kafka.properties (the
 * user's value wins). Returns 0, or -1 with err set. */
int us_kafka_conf_defaults(rd_kafka_conf_t *conf, const us_config *cfg, const char *const (*settings)[2],
                           size_t n, char *err, size_t errlen);

/* rd_kafka_new() that takes ownership of conf on failure too; what names the client in err. */
rd_kafka_t *us_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *what, char *err,
                         size_t errlen);

/* Settings of every producer of events: idempotent, acks=all, murmur2_random partitioner (the
 * Java client's, so that every client puts a user's events on the same partition). Properties the
 * user set in kafka.properties are left alone. */
int us_kafka_conf_event_producer(rd_kafka_conf_t *conf, const us_config *cfg,
                                 int64_t message_timeout_ms, char *err, size_t errlen);

/* Creates kafka.topic and kafka.dlq_topic when missing (kafka.partitions partitions, replication
 * kafka.replication_factor). Existing topics are left as they are. Returns 0, or -1 with err set
 * (broker unreachable, not allowed, ...). */
int us_kafka_ensure_topics(rd_kafka_t *rk, const us_config *cfg, int timeout_ms, char *err,
                           size_t errlen);

/* Creates one topic `name` when missing, with kafka.partitions partitions, replication
 * kafka.replication_factor and the nconfigs topic configs given as name/value pairs (e.g.
 * cleanup.policy=compact). An existing topic is left as it is. Returns 0, or -1 with err set. */
int us_kafka_ensure_topic(rd_kafka_t *rk, const us_config *cfg, const char *name,
                          const char *const (*configs)[2], size_t nconfigs, int timeout_ms,
                          char *err, size_t errlen);

/* Creates the compacted changes topic (changes.topic) when missing: the worker publishes to it, the
 * query service's watch stream follows it, and whichever starts first creates it. */
int us_kafka_ensure_changes_topic(rd_kafka_t *rk, const us_config *cfg, int timeout_ms, char *err,
                                  size_t errlen);

#endif
