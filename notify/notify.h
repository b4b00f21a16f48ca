/* userstatus-notify: delivers the status changes of the changes topic (schemas/changes.md) to
 * webhooks and to Centrifugo channels.
 *
 * Every destination has its own consumer group, its own Kafka consumer and its own thread
 * (notify/destination.c), so a receiver that is down or slow delays its own deliveries only:
 * other destinations, and the worker, which never waits for any of them, go on. A destination
 * kind only turns a batch of changes into requests (notify/webhook.c, notify/centrifugo.c). */
#ifndef US_NOTIFY_H
#define US_NOTIFY_H

#include "changes.h"
#include "config.h"
#include "http.h"
#include "metrics.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>

#define US_DEST_NAME_MAX 32    /* "webhook12", "centrifugo". */
#define US_DEST_GROUP_MAX 256  /* Consumer group names. */
#define US_DEST_METRIC_MAX 160 /* A metric name with this destination's labels. */

typedef enum us_dest_kind {
    US_DEST_WEBHOOK,
    US_DEST_CENTRIFUGO,
} us_dest_kind;

/* How one delivery attempt of a batch ended. */
typedef enum us_deliver_result {
    US_DELIVER_OK,    /* Acknowledged: the batch's offsets may be stored. */
    US_DELIVER_RETRY, /* Not acknowledged: try the whole batch again after a backoff. */
} us_deliver_result;

typedef struct us_dest {
    us_dest_kind kind;
    char name[US_DEST_NAME_MAX];   /* In logs and in the `destination` label of the metrics. */
    char group[US_DEST_GROUP_MAX]; /* Its consumer group. */
    const char *url;               /* Webhook URL, or Centrifugo's batch endpoint (url_buf). */
    const char *secret;            /* Webhook: the HMAC key. */
    const char *api_key;           /* Centrifugo: X-API-Key ("" sends none). */
    const char *channel_prefix;    /* Centrifugo: channel = prefix + user id. */
    char *url_buf;                 /* Owned (freed by main), when url was built here. */
    const us_config *cfg;
    volatile sig_atomic_t *stop;

    us_http *http;        /* Used by the destination's thread only. */
    rd_kafka_t *consumer; /* Idem. */
    pthread_t thread;
    int thread_started;
    int subscribed;      /* Joined the group: it must be left (closed) before being destroyed. */
    int closed;          /* Left the group at shutdown. */
    _Atomic int failed;  /* The thread gave up (could not subscribe): /health says so. */
    _Atomic int failing; /* The last attempt was not acknowledged. */
    int64_t budget_ms;   /* Longest retrying of one batch before it is rewound. */

    /* Batch in hand: messages kept until their offsets are stored. */
    rd_kafka_message_t **msgs;
    size_t nmsgs;
    us_change *changes;

    char metric_names[7][US_DEST_METRIC_MAX]; /* Storage of the names below (registry keeps
                                               * pointers). */
    us_metric *m_delivered, *m_skipped, *m_ok, *m_failed, *m_retries, *m_failing, *m_rewinds;
} us_dest;

/* Delivers n changes (a batch, in partition order per user) to a webhook: one signed POST.
 * Returns US_DELIVER_OK on a 2xx, else US_DELIVER_RETRY with the reason in err. */
us_deliver_result us_webhook_deliver(us_dest *d, const us_change *changes, size_t n, char *err,
                                     size_t errlen);

/* Publishes n changes to their Centrifugo channels with one batch API call. *skipped counts the
 * publications Centrifugo refused as bad requests (never retried: an invalid channel name stays
 * invalid). */
us_deliver_result us_centrifugo_deliver(us_dest *d, const us_change *changes, size_t n,
                                        size_t *skipped, char *err, size_t errlen);

/* Writes one change as the JSON object of the watch stream:
 * {"user","status","since"(ms),"active"?(s),"online"?(s),"state"?}. Returns a new reference, or
 * NULL when a string is not UTF-8 (the worker never publishes such). */
json_t *us_change_to_json(const us_change *c);

/* Starts the destination's thread (consumer in group d->group, delivery with retries). Returns 0,
 * or -1 with err set. */
int us_dest_start(us_dest *d, char *err, size_t errlen);

/* Waits for the thread to finish (it stops when *d->stop is set): it drops the batch it could
 * not deliver, commits the offsets of what was acknowledged and leaves the group. Returns 0, or -1
 * when the consumer could not leave its group (brokers unreachable) and was left running: the
 * caller then ends the process with _exit() rather than run exit handlers beside its threads. */
int us_dest_join(us_dest *d);

/* Registers the metrics of the n destinations, each family's samples next to each other. */
void us_dest_register_metrics(us_dest *dests, size_t n);

#endif
