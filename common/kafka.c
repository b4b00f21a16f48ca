/* Implementation of the shared Kafka set-up. */
#include "kafka.h"

#include "log.h"

#include <stdio.h>
#include <string.h>


static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* syslog levels: 0..3 error, 4 warning, 5..6 info, 7 debug. */
    us_log_level l = level <= 3 ? US_LOG_ERROR
                     : level == 4 ? US_LOG_WARN
                     : level <= 6 ? US_LOG_INFO
                                  : US_LOG_DEBUG;
    us_log(l, "kafka %s: %s: %s", rk ? rd_kafka_name(rk) : "", fac, buf);
}

int us_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                      size_t errlen)
{
    char kerr[512];
    if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka property '%s': %s", name, kerr);
        return -1;
    }
    return 0;
}

static int user_set(const us_config *cfg, const char *name)
{
    for (size_t i = 0; i + 1 < cfg->kafka.properties.count; i += 2)
        if (strcmp(cfg->kafka.properties.items[i], name) == 0) return 1;
    return 0;
}

rd_kafka_conf_t *us_kafka_conf_new(const us_config *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, log_cb);
    if (us_kafka_conf_set(conf, "bootstrap.servers", cfg->kafka.brokers, err, errlen) != 0)
        goto fail;
    for (size_t i = 0; i + 1 < cfg->kafka.properties.count; i += 2) {
        if (us_kafka_conf_set(conf, cfg->kafka.properties.items[i],
                              cfg->kafka.properties.items[i + 1], err, errlen) != 0)
            goto fail;
    }
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

int us_kafka_conf_defaults(rd_kafka_conf_t *conf, const us_config *cfg, const char *const (*settings)[2],
                           size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (user_set(cfg, settings[i][0])) continue;
        if (us_kafka_conf_set(conf, settings[i][0], settings[i][1], err, errlen) != 0) return -1;
    }
    return 0;
}

rd_kafka_t *us_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *what, char *err,
                         size_t errlen)
{
    char kerr[256];
    rd_kafka_t *rk = rd_kafka_new(type, conf, kerr, sizeof(kerr));
    if (!rk) {
        snprintf(err, errlen, "%s: %s", what, kerr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

int us_kafka_conf_event_producer(rd_kafka_conf_t *conf, const us_config *cfg,
                                 int64_t message_timeout_ms, char *err, size_t errlen)
{
    char timeout[24];
    snprintf(timeout, sizeof(timeout), "%lld", (long long)message_timeout_ms);
    const char *const settings[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"partitioner", "murmur2_random"},
        {"linger.ms", "2"},
        {"message.timeout.ms", timeout},
    };
    return us_kafka_conf_defaults(conf, cfg, settings, sizeof(settings) / sizeof(settings[0]), err,
                                  errlen);
}

int us_kafka_ensure_topics(rd_kafka_t *rk, const us_config *cfg, int timeout_ms, char *err,
                           size_t errlen)
{
    const char *names[2] = {cfg->kafka.topic, cfg->kafka.dlq_topic};
    rd_kafka_NewTopic_t *topics[2];
    char kerr[512];
    for (int i = 0; i < 2; i++) {
        topics[i] = rd_kafka_NewTopic_new(names[i], cfg->kafka.partitions,
                                          cfg->kafka.replication_factor, kerr, sizeof(kerr));
        if (!topics[i]) {
            snprintf(err, errlen, "topic '%s': %s", names[i], kerr);
            if (i) rd_kafka_NewTopic_destroy(topics[0]);
            return -1;
        }
    }
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, kerr, sizeof(kerr));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, topics, 2, opts, q);

    int rc = -1;
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
    if (!ev) {
        snprintf(err, errlen, "creating topics '%s' and '%s': no answer from %s within %d ms",
                 names[0], names[1], cfg->kafka.brokers, timeout_ms);
    } else if (rd_kafka_event_error(ev)) {
        snprintf(err, errlen, "creating topics '%s' and '%s' on %s: %s", names[0], names[1],
                 cfg->kafka.brokers, rd_kafka_event_error_string(ev));
    } else {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t n;
        const rd_kafka_topic_result_t **results = rd_kafka_CreateTopics_result_topics(res, &n);
        rc = 0;
        for (size_t i = 0; i < n; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
                us_info("created topic '%s' (%d partitions, replication %d)",
                        rd_kafka_topic_result_name(results[i]), cfg->kafka.partitions,
                        cfg->kafka.replication_factor);
            } else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                snprintf(err, errlen, "creating topic '%s': %s",
                         rd_kafka_topic_result_name(results[i]),
                         rd_kafka_topic_result_error_string(results[i]));
                rc = -1;
            }
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy_array(topics, 2);
    return rc;
}

int us_kafka_ensure_topic(rd_kafka_t *rk, const us_config *cfg, const char *name,
                          const char *const (*configs)[2], size_t nconfigs, int timeout_ms,
                          char *err, size_t errlen)
{
    char kerr[512];
    rd_kafka_NewTopic_t *topic = rd_kafka_NewTopic_new(name, cfg->kafka.partitions,
                                                       cfg->kafka.replication_factor, kerr,
                                                       sizeof(kerr));
    if (!topic) {
        snprintf(err, errlen, "topic '%s': %s", name, kerr);
        return -1;
    }
    for (size_t i = 0; i < nconfigs; i++) {
        if (rd_kafka_NewTopic_set_config(topic, configs[i][0], configs[i][1])) {
            snprintf(err, errlen, "topic '%s': cannot set %s=%s", name, configs[i][0],
                     configs[i][1]);
            rd_kafka_NewTopic_destroy(topic);
            return -1;
        }
    }
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, kerr, sizeof(kerr));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &topic, 1, opts, q);

    int rc = -1;
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
    if (!ev) {
        snprintf(err, errlen, "creating topic '%s': no answer from %s within %d ms", name,
                 cfg->kafka.brokers, timeout_ms);
    } else if (rd_kafka_event_error(ev)) {
        snprintf(err, errlen, "creating topic '%s' on %s: %s", name, cfg->kafka.brokers,
                 rd_kafka_event_error_string(ev));
    } else {
        size_t n;
        const rd_kafka_topic_result_t **results =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        rc = 0;
        for (size_t i = 0; i < n; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
                us_info("created topic '%s' (%d partitions, replication %d)", name,
                        cfg->kafka.partitions, cfg->kafka.replication_factor);
            } else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                snprintf(err, errlen, "creating topic '%s': %s", name,
                         rd_kafka_topic_result_error_string(results[i]));
                rc = -1;
            }
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(topic);
    return rc;
}

int us_kafka_ensure_changes_topic(rd_kafka_t *rk, const us_config *cfg, int timeout_ms, char *err,
                                  size_t errlen)
{
    static const char *const configs[][2] = {{"cleanup.policy", "compact"}};
    return us_kafka_ensure_topic(rk, cfg, cfg->changes.topic, configs, 1, timeout_ms, err, errlen);
}
