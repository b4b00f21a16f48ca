/* Implementation of the watch stream.
 *
 * Streams
 * -------
 * A stream is a chunked text/event-stream response whose bytes come from a bounded buffer. The
 * content reader (called by libmicrohttpd when the socket can take data) copies what is buffered;
 * when nothing is, it suspends the connection and returns 0, as libmicrohttpd requires for data
 * that arrives later. Whoever appends to a suspended stream's buffer (the initial read's completion,
 * the consumer thread, the keep-alive tick, shutdown) resumes it. A stream whose buffer would exceed
 * WATCH_BUFFER_MAX beyond its initial statuses -- a client reading slower than its users change --
 * is ended with an error (the connection is closed); the client reconnects and gets the current
 * statuses again.
 *
 * Changes
 * -------
 * One consumer thread reads the changes topic (all partitions, from their end, no consumer group
 * commits: a watcher wants what happens from now on) and hands each change to the streams watching
 * its user, found in a hash table of (user -> stream) entries.
 *
 * Lifetimes and locks
 * -------------------
 * A stream is referenced by libmicrohttpd (until its response is freed), by its initial read (until
 * that call completes) and, briefly, by whoever appends to it; it is freed at zero. w->mu guards the
 * table and the stream list; a stream's mu guards its buffer and flags. Lock order: w->mu, then a
 * stream's mu. libmicrohttpd is never called with w->mu held. */
#include "watch.h"

#include "api.h"
#include "changes.h"
#include "clock.h"
#include "coalesce.h"
#include "http_loop.h"
#include "json_writer.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WATCH_BUFFER_MAX (64 * 1024)   /* Bytes buffered per stream before it is cut. */
#define WATCH_KEEPALIVE_MS 15000       /* A comment line this often keeps proxies from closing. */
#define WATCH_POLL_MS 100              /* Consumer poll timeout. Milliseconds. */
#define WATCH_TOPIC_RETRY_MIN_MS 250   /* First wait for the changes topic's metadata (a topic just
                                        * created takes a moment to appear). Milliseconds. */
#define WATCH_TOPIC_RETRY_MS 5000      /* Longest wait between attempts. Milliseconds. */
#define WATCH_TABLE_BITS 12            /* 4096 hash chains. */
#define WATCH_BLOCK_SIZE 4096          /* libmicrohttpd's read size for the stream. */

typedef struct stream stream;

/* One (user, stream) pair of the table. */
typedef struct entry {
    const char *user; /* Points into the stream's copy of its users. */
    size_t len;
    uint64_t hash;
    stream *s;
    struct entry *next;
} entry;

struct stream {
    us_watch *w;
    struct MHD_Connection *conn;
    us_http_loop *loop; /* conn's (http_loop.h). */
    _Atomic int refs;
    pthread_mutex_t mu;
    char *buf; /* Bytes not yet taken by libmicrohttpd: buf[off..len). */
    size_t off, len, cap;
    int suspended; /* The reader suspended the connection; the next append resumes it. */
    int closing;   /* End the response once the buffer is drained. */
    int cut;       /* Overflowed: end it with an error. */
    int started;   /* The initial statuses are in the buffer. */
    size_t initial_len; /* Their size: the buffer may hold them plus WATCH_BUFFER_MAX. */
    char *user_mem;
    us_user_ref *users;
    size_t nusers;
    entry *entries;  /* nusers entries, linked into the table. */
    us_call *call;   /* The initial read. */
    stream *prev, *next; /* In w->streams. */
};

struct us_watch {
    const us_config *cfg;
    us_core *core;
    us_presence_rules rules;
    pthread_mutex_t mu;
    entry *table[1 << WATCH_TABLE_BITS];
    stream *streams;
    size_t nstreams;
    int quiesced;
    _Atomic int stop;
    _Atomic int ready; /* The changes topic is followed: no change published from now is missed. */
    rd_kafka_t *rk;
    pthread_t thread;
    int thread_started;
    us_metric *m_streams, *m_status, *m_change, *m_cut, *m_refused;
};

/* ---------------------------------------------------------------------------------------------
 * Streams.
 * ------------------------------------------------------------------------------------------ */

static void stream_unref(stream *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1) return;
    pthread_mutex_destroy(&s->mu);
    free(s->buf);
    free(s->user_mem);
    free(s->users);
    free(s->entries);
    free(s);
}

/* Appends text to s (at the front when front is set: the initial statuses go before the changes
 * that arrived while they were read), cutting the stream when it would overflow; resumes the
 * connection when the reader waits for data. Takes and releases s->mu; never holds w->mu. */
static void stream_append(stream *s, const char *text, size_t n, int front)
{
    pthread_mutex_lock(&s->mu);
    if (!s->cut && !s->closing) {
        size_t have = s->len - s->off;
        if (front) s->initial_len = n; /* However many users are watched, they are sent. */
        if (!front && have + n > WATCH_BUFFER_MAX + s->initial_len) {
            s->cut = 1;
            us_metric_add(s->w->m_cut, 1);
        } else {
            if (s->off) { /* Compact. */
                memmove(s->buf, s->buf + s->off, have);
                s->off = 0;
                s->len = have;
            }
            if (s->len + n > s->cap) {
                size_t cap = s->cap ? s->cap : 1024;
                while (cap < s->len + n) cap *= 2;
                s->buf = realloc(s->buf, cap);
                if (!s->buf) abort();
                s->cap = cap;
            }
            if (front) {
                memmove(s->buf + n, s->buf, s->len);
                memcpy(s->buf, text, n);
            } else {
                memcpy(s->buf + s->len, text, n);
            }
            s->len += n;
        }
    }
    int resume = s->suspended;
    s->suspended = 0;
    pthread_mutex_unlock(&s->mu);
    if (resume) us_http_loop_resume(s->loop, s->conn);
}

/* Marks s to end once drained and wakes it. */
static void stream_close(stream *s)
{
    pthread_mutex_lock(&s->mu);
    int resume = s->suspended;
    s->suspended = 0;
    s->closing = 1;
    pthread_mutex_unlock(&s->mu);
    if (resume) us_http_loop_resume(s->loop, s->conn);
}

/* libmicrohttpd's content reader: buffered bytes, else suspend until there are some. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream *s = cls;
    pthread_mutex_lock(&s->mu);
    ssize_t rc;
    if (s->len > s->off) {
        size_t n = s->len - s->off < max ? s->len - s->off : max;
        memcpy(buf, s->buf + s->off, n);
        s->off += n;
        if (s->off == s->len) s->off = s->len = 0;
        rc = (ssize_t)n;
    } else if (s->cut) {
        rc = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (s->closing && s->started) {
        rc = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        s->suspended = 1;
        MHD_suspend_connection(s->conn);
        rc = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* libmicrohttpd is done with the response (the connection ended): unlink and drop its ref. */
static void stream_done(void *cls)
{
    stream *s = cls;
    us_watch *w = s->w;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < s->nusers; i++) {
        entry **p = &w->table[s->entries[i].hash & ((1u << WATCH_TABLE_BITS) - 1)];
        while (*p && *p != &s->entries[i]) p = &(*p)->next;
        if (*p) *p = s->entries[i].next;
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        w->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    w->nstreams--;
    pthread_mutex_unlock(&w->mu);
    us_metric_gauge_add(w->m_streams, -1);
    stream_unref(s);
}

/* ---------------------------------------------------------------------------------------------
 * Events.
 * ------------------------------------------------------------------------------------------ */

/* Appends `event: <name>` and `data: ` to out (the JSON object follows, then "\n\n"). */
static void event_head(us_jw *out, const char *name)
{
    us_jw_cstr(out, "event: ");
    us_jw_cstr(out, name);
    us_jw_cstr(out, "\ndata: ");
}

/* The core's done callback of a stream's initial read: one `status` event per user. */
static void initial_done(us_call *call, void *arg)
{
    stream *s = arg;
    us_watch *w = s->w;
    us_cmd *c = us_call_cmd(call, 0);
    us_jw out = {0};
    if (c->error) {
        event_head(&out, "error");
        us_jw_error_object(&out, c->error, us_error_message(c->error));
        us_jw_cstr(&out, "\n\n");
    } else {
        int64_t now = us_now_ms();
        for (size_t i = 0; i < c->nusers; i++) {
            const us_status *st = &c->statuses[i];
            int64_t active = st->active != US_TIME_NONE ? st->active * 1000 : US_PRESENCE_NONE;
            int64_t online = st->online != US_TIME_NONE ? st->online * 1000 : US_PRESENCE_NONE;
            event_head(&out, "status");
            us_jw_cstr(&out, "{\"user\":");
            us_jw_str(&out, c->users[i].user, c->users[i].len);
            us_jw_cstr(&out, ",\"status\":\"");
            us_jw_cstr(&out, us_status_kind_name(us_presence_status_at(&w->rules, active, online, now)));
            us_jw_cstr(&out, "\"");
            if (st->active != US_TIME_NONE) {
                us_jw_cstr(&out, ",\"active\":");
                us_jw_int(&out, st->active);
            }
            if (st->online != US_TIME_NONE) {
                us_jw_cstr(&out, ",\"online\":");
                us_jw_int(&out, st->online);
            }
            if (st->has_state) {
                us_jw_cstr(&out, ",\"state\":");
                us_jw_str(&out, st->state, st->state_len);
            }
            us_jw_cstr(&out, "}\n\n");
        }
        us_metric_add(w->m_status, c->nusers);
    }
    pthread_mutex_lock(&s->mu);
    s->started = 1;
    pthread_mutex_unlock(&s->mu);
    stream_append(s, out.p ? out.p : "", out.len, 1);
    us_jw_free(&out);
    us_call_release(call);
    stream_unref(s);
}

/* Writes a change as an SSE `change` event. */
static void format_change(us_jw *out, const us_change *ch)
{
    event_head(out, "change");
    us_jw_cstr(out, "{\"user\":");
    us_jw_str(out, ch->user, ch->user_len);
    us_jw_cstr(out, ",\"status\":\"");
    us_jw_cstr(out, us_status_kind_name(ch->status));
    us_jw_cstr(out, "\",\"since\":");
    us_jw_int(out, ch->since);
    if (ch->active != US_PRESENCE_NONE) {
        us_jw_cstr(out, ",\"active\":");
        us_jw_int(out, ch->active);
    }
    if (ch->online != US_PRESENCE_NONE) {
        us_jw_cstr(out, ",\"online\":");
        us_jw_int(out, ch->online);
    }
    if (ch->has_state) {
        us_jw_cstr(out, ",\"state\":");
        us_jw_str(out, ch->state, ch->state_len);
    }
    us_jw_cstr(out, "}\n\n");
}

/* Collects, under w->mu, a counted reference to every stream watching user (at most cap). */
static size_t watchers_of(us_watch *w, const char *user, size_t len, stream **out, size_t cap)
{
    uint64_t h = us_fnv1a64(user, len);
    size_t n = 0;
    pthread_mutex_lock(&w->mu);
    for (entry *e = w->table[h & ((1u << WATCH_TABLE_BITS) - 1)]; e && n < cap; e = e->next)
        if (e->hash == h && e->len == len && memcmp(e->user, user, len) == 0) {
            atomic_fetch_add(&e->s->refs, 1);
            out[n++] = e->s;
        }
    pthread_mutex_unlock(&w->mu);
    return n;
}

#define FANOUT_BATCH 256 /* Streams served per table look-up. */

static void deliver(us_watch *w, const void *value, size_t len)
{
    us_change ch;
    char detail[128];
    if (us_change_decode(value, len, &ch, detail, sizeof(detail)) != 0) {
        us_warn("watch: skipping a message of '%s' that is not a change: %s",
                w->cfg->changes.topic, detail);
        return;
    }
    stream *targets[FANOUT_BATCH];
    size_t n = watchers_of(w, ch.user, ch.user_len, targets, FANOUT_BATCH);
    if (n == 0) return;
    us_jw out = {0};
    format_change(&out, &ch);
    for (size_t i = 0; i < n; i++) {
        stream_append(targets[i], out.p, out.len, 0);
        stream_unref(targets[i]);
    }
    us_metric_add(w->m_change, n);
    us_jw_free(&out);
}

/* Appends text to every open stream, then, with close, ends each once drained. quiesce (under
 * w->mu) refuses new streams from then on. */
static void broadcast(us_watch *w, const char *text, size_t n, int close, int quiesce)
{
    pthread_mutex_lock(&w->mu);
    if (quiesce) w->quiesced = 1;
    size_t total = w->nstreams, k = 0;
    stream **all = malloc((total ? total : 1) * sizeof(*all));
    if (!all) abort();
    for (stream *s = w->streams; s && k < total; s = s->next) {
        atomic_fetch_add(&s->refs, 1);
        all[k++] = s;
    }
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < k; i++) {
        stream_append(all[i], text, n, 0);
        if (close) stream_close(all[i]);
        stream_unref(all[i]);
    }
    free(all);
}

static void keep_alive(us_watch *w)
{
    static const char ping[] = ": keep-alive\n\n";
    broadcast(w, ping, sizeof(ping) - 1, 0, 0);
}

/* ---------------------------------------------------------------------------------------------
 * The changes-topic consumer.
 * ------------------------------------------------------------------------------------------ */

/* Creates the changes topic when missing and assigns every partition of it from its end. Returns
 * 0, or -1 with err set when the broker cannot be asked. */
static int assign_all(us_watch *w, char *err, size_t errlen)
{
    if (us_kafka_ensure_changes_topic(w->rk, w->cfg, WATCH_TOPIC_RETRY_MS, err, errlen) != 0)
        return -1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(w->rk, w->cfg->changes.topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(w->rk, 0, rkt, &md, 5000);
    rd_kafka_topic_destroy(rkt);
    if (e || md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0) {
        snprintf(err, errlen, "watch: topic '%s' not available yet: %s", w->cfg->changes.topic,
                 e ? rd_kafka_err2str(e)
                   : rd_kafka_err2str(md->topic_cnt ? md->topics[0].err
                                                    : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART));
        if (md) rd_kafka_metadata_destroy(md);
        return -1;
    }
    int n = md->topics[0].partition_cnt;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(parts, w->cfg->changes.topic, i)->offset =
            RD_KAFKA_OFFSET_END;
    rd_kafka_metadata_destroy(md);
    e = rd_kafka_assign(w->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e) {
        snprintf(err, errlen, "watch: cannot assign '%s': %s", w->cfg->changes.topic,
                 rd_kafka_err2str(e));
        return -1;
    }
    us_info("watch: following %d partition(s) of '%s'", n, w->cfg->changes.topic);
    atomic_store(&w->ready, 1);
    return 0;
}

static void *consumer_main(void *arg)
{
    us_watch *w = arg;
    int assigned = 0;
    int64_t next_try = 0, next_ping = us_monotonic_ms() + WATCH_KEEPALIVE_MS;
    int64_t retry_ms = WATCH_TOPIC_RETRY_MIN_MS;
    char err[256];
    while (!atomic_load(&w->stop)) {
        int64_t now = us_monotonic_ms();
        if (!assigned && now >= next_try) {
            assigned = assign_all(w, err, sizeof(err)) == 0;
            if (!assigned) {
                if (retry_ms >= WATCH_TOPIC_RETRY_MS) /* Quick retries are expected: quiet. */
                    us_warn("%s; retrying in %lld ms", err, (long long)retry_ms);
                next_try = now + retry_ms;
                retry_ms = retry_ms * 2 > WATCH_TOPIC_RETRY_MS ? WATCH_TOPIC_RETRY_MS : retry_ms * 2;
            }
        }
        if (now >= next_ping) {
            keep_alive(w);
            next_ping = now + WATCH_KEEPALIVE_MS;
        }
        if (!assigned) {
            us_sleep_ms(WATCH_POLL_MS);
            continue;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(w->rk, WATCH_POLL_MS);
        if (!m) continue;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                us_warn("watch: consuming '%s': %s", w->cfg->changes.topic,
                        rd_kafka_message_errstr(m));
        } else if (m->payload) {
            deliver(w, m->payload, m->len);
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------------------------ */

us_watch *us_watch_new(const us_config *cfg, us_core *core, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = us_kafka_conf_new(cfg, err, errlen);
    if (!conf) return NULL;
    /* Offsets are never committed: a process follows the topic from the end it finds at start,
     * under a group id of its own so that its assignment is not shared. */
    char group[128];
    snprintf(group, sizeof(group), "userstatus-query-watch-%d", (int)getpid());
    if (us_kafka_conf_set(conf, "group.id", group, err, errlen) != 0 ||
        us_kafka_conf_set(conf, "enable.auto.commit", "false", err, errlen) != 0 ||
        us_kafka_conf_set(conf, "enable.auto.offset.store", "false", err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = us_kafka_new(RD_KAFKA_CONSUMER, conf, "watch consumer", err, errlen);
    if (!rk) return NULL;
    us_watch *w = calloc(1, sizeof(*w));
    if (!w) abort();
    w->cfg = cfg;
    w->core = core;
    w->rk = rk;
    w->rules.offline_after_ms = cfg->changes.offline_after_ms;
    w->rules.away_after_ms = cfg->changes.away_after_ms;
    pthread_mutex_init(&w->mu, NULL);
    w->m_streams = us_metric_gauge("userstatus_query_watch_streams", "Open watch streams.");
    w->m_status = us_metric_counter("userstatus_query_watch_events_total{event=\"status\"}",
                                    "Events written to watch streams, by event.");
    w->m_change = us_metric_counter("userstatus_query_watch_events_total{event=\"change\"}",
                                    "Events written to watch streams, by event.");
    w->m_cut = us_metric_counter("userstatus_query_watch_streams_cut_total",
                                 "Watch streams ended because the client read slower than its "
                                 "users changed (more than 64 KiB buffered).");
    w->m_refused = us_metric_counter("userstatus_query_watch_streams_refused_total",
                                     "Watch streams refused at changes.watch_max_streams.");
    int rc = pthread_create(&w->thread, NULL, consumer_main, w);
    if (rc != 0) {
        snprintf(err, errlen, "watch: cannot start the consumer thread");
        us_watch_free(w);
        return NULL;
    }
    w->thread_started = 1;
    return w;
}

int us_watch_start(us_watch *w, struct MHD_Connection *conn, json_t *params, enum MHD_Result *rc,
                   char *reason, size_t reasonlen)
{
    us_user_ref *users;
    size_t n, state_len;
    const char *state;
    int has_state;
    int code = us_api_parse_users(w->cfg, params, 0, &users, &n, &state, &state_len, &has_state,
                                  reason, reasonlen);
    if (code == 0 && n == 0) {
        code = US_ERR_BAD_REQUEST;
        snprintf(reason, reasonlen, "'users' is empty: nothing to watch");
    }
    if (code) {
        free(users);
        return code;
    }

    stream *s = calloc(1, sizeof(*s));
    if (!s) abort();
    s->w = w;
    s->conn = conn;
    s->loop = us_http_loop_current();
    s->refs = 2; /* libmicrohttpd's response, and the initial read. */
    pthread_mutex_init(&s->mu, NULL);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += users[i].len;
    s->user_mem = malloc(total ? total : 1);
    s->users = malloc(n * sizeof(*s->users));
    s->entries = calloc(n, sizeof(*s->entries));
    if (!s->user_mem || !s->users || !s->entries) abort();
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(s->user_mem + off, users[i].user, users[i].len);
        s->users[i].user = s->user_mem + off;
        s->users[i].len = users[i].len;
        off += users[i].len;
    }
    s->nusers = n;
    free(users);

    pthread_mutex_lock(&w->mu);
    if (w->quiesced || w->nstreams >= (size_t)w->cfg->changes.watch_max_streams) {
        int shutting = w->quiesced;
        pthread_mutex_unlock(&w->mu);
        if (!shutting) us_metric_add(w->m_refused, 1);
        pthread_mutex_destroy(&s->mu);
        free(s->user_mem);
        free(s->users);
        free(s->entries);
        free(s);
        snprintf(reason, reasonlen, "%s",
                 shutting ? "shutting down" : "too many watch streams (changes.watch_max_streams)");
        return shutting ? US_ERR_INTERNAL : US_ERR_NOT_AVAILABLE;
    }
    for (size_t i = 0; i < n; i++) { /* Registered first: no change is missed during the read. */
        entry *e = &s->entries[i];
        e->user = s->users[i].user;
        e->len = s->users[i].len;
        e->hash = us_fnv1a64(e->user, e->len);
        e->s = s;
        entry **head = &w->table[e->hash & ((1u << WATCH_TABLE_BITS) - 1)];
        e->next = *head;
        *head = e;
    }
    s->next = w->streams;
    if (w->streams) w->streams->prev = s;
    w->streams = s;
    w->nstreams++;
    pthread_mutex_unlock(&w->mu);
    us_metric_gauge_add(w->m_streams, 1);

    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, WATCH_BLOCK_SIZE, stream_read, s,
                                          stream_done);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* nginx: do not buffer. */
    *rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp); /* libmicrohttpd keeps it; stream_done runs when it is freed. */

    s->call = us_call_new(w->core, 1, US_TRANSPORT_HTTP);
    us_cmd_set(w->core, us_call_cmd(s->call, 0), US_CMD_GET, s->users, s->nusers, NULL, 0, 0);
    if (us_call_start(s->call, w->cfg->query.request_timeout_ms, initial_done, NULL, s))
        initial_done(s->call, s);
    return 0;
}

int us_watch_ready(us_watch *w)
{
    return !w || atomic_load(&w->ready);
}

size_t us_watch_streams(us_watch *w)
{
    if (!w) return 0;
    pthread_mutex_lock(&w->mu);
    size_t n = w->nstreams;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void us_watch_quiesce(us_watch *w)
{
    if (!w) return;
    static const char bye[] = "event: bye\ndata: {\"reason\":\"shutting down\"}\n\n";
    broadcast(w, bye, sizeof(bye) - 1, 1, 1);
}

void us_watch_free(us_watch *w)
{
    if (!w) return;
    atomic_store(&w->stop, 1);
    if (w->thread_started) pthread_join(w->thread, NULL);
    rd_kafka_consumer_close(w->rk);
    rd_kafka_destroy(w->rk);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
