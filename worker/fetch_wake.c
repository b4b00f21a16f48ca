/* Implementation of the fetch waker: a small prefetch queue at full speed.
 *
 * Why a small prefetch queue stalls
 * ---------------------------------
 * librdkafka prefetches into the consumer's local queue until it holds queued.min.messages
 * messages (or queued.max.messages.kbytes of payload). Then each broker thread stops fetching
 * and, in librdkafka 2.0 (Debian 12), looks again only when something wakes it: its own I/O, an
 * operation queued to it, or the end of its 1 s idle wait. A worker that drains the queue faster
 * than that sits idle until the next tick, so the queue must hold about one second of events for
 * full speed: ~135 000 messages of ~370 bytes each (librdkafka's 296-byte operation per message
 * plus its share of the fetch buffer) here, 50 MB of the 72 MB the worker peaked at.
 * (A known limitation, librdkafka issue #2879; 2.3 added fetch.queue.backoff.ms for it, whose
 * default is still 1 s.)
 *
 * The wake-up
 * -----------
 * Any request to a broker wakes its thread, which then sees the queue below the threshold and
 * fetches again. When the consumer loop finds the queue drained below queued.min.messages after it
 * was full (or after a full batch), this module sends the cheapest request that reaches every
 * leader of the assignment: a ListOffsets of the assigned partitions (rd_kafka_offsets_for_times
 * for "latest", one request per leader broker; the answer is not used). It runs on a thread of its
 * own because that call waits for the answer; requests coalesce, so at most one is in flight. With
 * live traffic the queue never fills and no request is sent; during a backlog it is about one per
 * batch.
 *
 * The queue can then stay small: the worker's defaults (consumer.c) keep a few thousand messages
 * and small fetches, and the measurements behind them are in docs/choices.md. */
#include "fetch_wake.h"

#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAKE_TIMEOUT_MS 500 /* Longest wait for the ListOffsets answers (only bounds shutdown). */
#define QUEUED_MIN_DEFAULT 100000 /* librdkafka's default queued.min.messages. */

struct us_fetch_wake {
    rd_kafka_t *consumer;
    rd_kafka_queue_t *queue; /* The consumer queue, whose length librdkafka compares. */
    int queued_min;          /* The consumer's queued.min.messages. */
    int armed;               /* Consumer loop only: a wake-up is due once the queue runs low. */
    pthread_t thread;
    pthread_mutex_t lock; /* Guards requested and stopping. */
    pthread_cond_t cond;
    int requested; /* A wake-up is asked for and not yet started. */
    int stopping;
    us_metric *m_wakes;
};

/* Sends one ListOffsets to the leader of every assigned partition and waits for the answers (or
 * WAKE_TIMEOUT_MS). Failures only cost a tick of the fetcher: logged at debug level. */
static void wake_fetchers(us_fetch_wake *fw)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t err = rd_kafka_assignment(fw->consumer, &parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        us_debug("fetch wake-up: reading the assignment: %s", rd_kafka_err2str(err));
        return;
    }
    if (parts->cnt > 0) {
        for (int i = 0; i < parts->cnt; i++)
            parts->elems[i].offset = RD_KAFKA_OFFSET_END; /* As a timestamp: the latest offset. */
        err = rd_kafka_offsets_for_times(fw->consumer, parts, WAKE_TIMEOUT_MS);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
            us_debug("fetch wake-up: listing the offsets of %d partitions: %s", parts->cnt,
                     rd_kafka_err2str(err));
        us_metric_add(fw->m_wakes, 1);
    }
    rd_kafka_topic_partition_list_destroy(parts);
}

static void *wake_thread(void *arg)
{
    us_fetch_wake *fw = arg;
    pthread_mutex_lock(&fw->lock);
    for (;;) {
        while (!fw->requested && !fw->stopping) pthread_cond_wait(&fw->cond, &fw->lock);
        if (fw->stopping) break;
        fw->requested = 0;
        pthread_mutex_unlock(&fw->lock);
        wake_fetchers(fw);
        pthread_mutex_lock(&fw->lock);
    }
    pthread_mutex_unlock(&fw->lock);
    return NULL;
}

us_fetch_wake *us_fetch_wake_start(rd_kafka_t *consumer, char *err, size_t errlen)
{
    us_fetch_wake *fw = calloc(1, sizeof(*fw));
    if (!fw) {
        snprintf(err, errlen, "fetch waker: out of memory");
        return NULL;
    }
    fw->consumer = consumer;
    fw->queue = rd_kafka_queue_get_consumer(consumer);
    char value[32];
    size_t len = sizeof(value);
    fw->queued_min = QUEUED_MIN_DEFAULT;
    if (rd_kafka_conf_get(rd_kafka_conf(consumer), "queued.min.messages", value, &len) ==
        RD_KAFKA_CONF_OK)
        fw->queued_min = atoi(value);
    if (fw->queued_min < 1) fw->queued_min = 1;
    fw->m_wakes = us_metric_counter("userstatus_worker_fetch_wakeups_total",
                                    "Wake-ups of librdkafka's fetchers after the worker drained "
                                    "its prefetch queue (one ListOffsets per leader broker).");
    pthread_mutex_init(&fw->lock, NULL);
    pthread_cond_init(&fw->cond, NULL);
    int rc = pthread_create(&fw->thread, NULL, wake_thread, fw);
    if (rc != 0) {
        snprintf(err, errlen, "fetch waker: cannot start its thread: %s", strerror(rc));
        pthread_cond_destroy(&fw->cond);
        pthread_mutex_destroy(&fw->lock);
        if (fw->queue) rd_kafka_queue_destroy(fw->queue);
        free(fw);
        return NULL;
    }
    return fw;
}

void us_fetch_wake_check(us_fetch_wake *fw, int backlog)
{
    if (!fw || !fw->queue) return;
    int full = rd_kafka_queue_length(fw->queue) >= (size_t)fw->queued_min;
    if (full || backlog) fw->armed = 1;
    if (full || !fw->armed) return;
    fw->armed = 0;
    pthread_mutex_lock(&fw->lock);
    fw->requested = 1;
    pthread_cond_signal(&fw->cond);
    pthread_mutex_unlock(&fw->lock);
}

void us_fetch_wake_stop(us_fetch_wake *fw)
{
    if (!fw) return;
    pthread_mutex_lock(&fw->lock);
    fw->stopping = 1;
    pthread_cond_signal(&fw->cond);
    pthread_mutex_unlock(&fw->lock);
    pthread_join(fw->thread, NULL);
    pthread_cond_destroy(&fw->cond);
    pthread_mutex_destroy(&fw->lock);
    if (fw->queue) rd_kafka_queue_destroy(fw->queue);
    free(fw);
}
