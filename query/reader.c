/* Implementation of the batched Redis reader, of the reads deferred to event loops, and of the
 * inline shortcut for small reads when the reader is idle.
 *
 * Deferred reads
 * --------------
 * A loop thread's inline_store (below) also holds the jobs it deferred, in order, until its flush
 * reads them in one round trip (read_jobs, as a reader thread's round). Only that thread touches
 * them. While the flush awaits the replies, the loop runs libmicrohttpd, whose handlers may defer
 * more jobs: they go to the emptied list, for the next flush. A failed flush turns deferring and
 * inline reads off (rd->inline_ok) until a batched round trip succeeds, and hands its jobs to the
 * reader threads (calling each job's handoff first).
 *
 * Batched reads
 * -------------
 * Submitters queue jobs under rd->mu; a reader thread takes every queued job (up to
 * MAX_USERS_PER_ROUND users), reads them in one pipelined round trip per node, then runs each
 * job's done callback, which resumes the waiting connection.
 *
 * Inline reads
 * ------------
 * Profiles of 1-user gets under wrk show the handoff, not Redis, dominating: per request a reader
 * thread is woken (futex), the HTTP connection is suspended and resumed (an eventfd write and an
 * extra pass of libmicrohttpd's event loop), and two threads' caches are touched. When no job is
 * queued there is nothing to share a round trip with, so a small read is done on the caller's
 * thread over that thread's own store (a thread-specific us_redis, made on first use and kept in
 * rd->inline_list for us_reader_free). Its timeouts are READER_INLINE_TIMEOUT_MS, so that a slow or
 * frozen Redis holds an HTTP thread that long at most; such a failure turns inline reads off
 * (rd->inline_ok) until a batched round trip succeeds again, and the read itself is handed to the
 * batched reader, which has the configured redis_io_timeout. Under load jobs are queued, and new
 * reads join the batch as before. */
#include "reader.h"

#include "clock.h"
#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_USERS_PER_ROUND 8192 /* Users read in one round; bounds a round's latency. */
#define READER_PING_MS 1000      /* An idle reader thread PINGs Redis this often. Milliseconds. */

/* The scratch arrays of one round trip: the users of every job, then their statuses. */
typedef struct round_buf {
    us_user_ref *users;
    us_status *out;
    size_t cap;
} round_buf;

/* One thread's store for inline reads, and, on an event-loop thread, its deferred reads. Only
 * that thread touches it, except for the list links. */
typedef struct inline_store {
    us_reader *rd;
    us_redis *redis;
    int loop;                    /* The thread called us_reader_loop_begin. */
    us_read_job *dhead, *dtail;  /* Deferred jobs, until us_reader_flush. */
    size_t dusers;               /* Their users. */
    round_buf buf;               /* Scratch of the flush's round trip. */
    struct inline_store *prev, *next; /* In rd->inline_list, under rd->mu. */
} inline_store;

struct us_reader {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    us_read_job *head, *tail;
    int stop;
    pthread_t *threads;
    us_redis **redis; /* Each thread's store, for us_redis_interrupt at stop. */
    int nthreads;
    const us_config *cfg;
    int healthy;         /* Outcome of the last round trip (-1: none yet), under mu. */
    char health_err[256]; /* Its reason when it failed, under mu. */

    us_config inline_cfg;        /* cfg with READER_INLINE_TIMEOUT_MS timeouts (shallow copy). */
    pthread_key_t inline_key;    /* The calling thread's inline_store. */
    inline_store *inline_list;   /* Every thread's, under mu. */
    int inline_ok;               /* No inline read failed since the last good round trip; mu. */
    us_metric *m_inline, *m_batched; /* Jobs read inline / by the reader threads. */
    int inline_busy;             /* Inline reads in progress; under mu. */
    int rounds_busy;             /* Batched round trips in progress; under mu. */
};

/* Records the outcome of a round trip for us_reader_health. */
static void set_health(us_reader *rd, int ok, const char *err)
{
    pthread_mutex_lock(&rd->mu);
    int was = rd->healthy;
    rd->healthy = ok;
    if (!ok) snprintf(rd->health_err, sizeof(rd->health_err), "%s", err);
    if (ok) rd->inline_ok = 1;
    pthread_mutex_unlock(&rd->mu);
    if (was != 0 && !ok) us_warn("reader: Redis is unhealthy: %s", err); /* Changes only. */
    if (was == 0 && ok) us_info("reader: Redis is healthy again");
}

/* One reader thread's own connections and scratch arrays. */
typedef struct reader_thread {
    us_reader *rd;
    us_redis *redis;
    round_buf buf;
} reader_thread;

static void reserve(round_buf *b, size_t n)
{
    if (n <= b->cap) return;
    free(b->users);
    free(b->out);
    b->users = malloc(n * sizeof(*b->users));
    b->out = malloc(n * sizeof(*b->out));
    if (!b->users || !b->out) abort();
    b->cap = n;
}

/* Takes queued jobs, up to MAX_USERS_PER_ROUND users (at least one job). Called locked. */
static us_read_job *take_jobs(us_reader *rd, size_t *nusers)
{
    us_read_job *first = rd->head, *last = NULL, *j = rd->head;
    size_t n = 0;
    while (j && (n == 0 || n + j->n <= MAX_USERS_PER_ROUND)) {
        n += j->n;
        last = j;
        j = j->next;
    }
    rd->head = j;
    if (!j) rd->tail = NULL;
    if (last) last->next = NULL;
    *nusers = n;
    return first;
}

/* Reads the users of a list of jobs (nusers in all) in one pipelined round trip per node, and
 * fills each job's out. 0, or -1 with err set (no job's out is touched). */
static int read_jobs(us_redis *redis, round_buf *b, us_read_job *jobs, size_t nusers, char *err,
                     size_t errlen)
{
    reserve(b, nusers ? nusers : 1);
    size_t k = 0;
    for (us_read_job *j = jobs; j; j = j->next) {
        memcpy(b->users + k, j->users, j->n * sizeof(*b->users));
        k += j->n;
    }
    if (us_redis_get(redis, b->users, nusers, b->out, err, errlen) != 0) return -1;
    k = 0;
    for (us_read_job *j = jobs; j; j = j->next) {
        memcpy(j->out, b->out + k, j->n * sizeof(*b->out));
        k += j->n;
    }
    return 0;
}

/* Runs each job's done callback; failed marks them failed first. */
static void finish_jobs(us_read_job *jobs, int failed)
{
    while (jobs) {
        us_read_job *next = jobs->next; /* The job may be freed once done runs. */
        jobs->failed = failed;
        jobs->done(jobs);
        jobs = next;
    }
}

static void run_round(reader_thread *t, us_read_job *jobs, size_t nusers)
{
    char err[256];
    int rc = read_jobs(t->redis, &t->buf, jobs, nusers, err, sizeof(err));
    if (rc != 0) us_error("get_user_status of %zu users: %s", nusers, err);
    set_health(t->rd, rc == 0, err);
    finish_jobs(jobs, rc != 0);
}

static void *reader_main(void *arg)
{
    reader_thread *t = arg;
    us_reader *rd = t->rd;
    char perr[256];
    int pok = us_redis_ping(t->redis, perr, sizeof(perr)) == 0; /* Health known from the start. */
    set_health(rd, pok, perr);
    for (;;) {
        pthread_mutex_lock(&rd->mu);
        while (!rd->head && !rd->stop) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += READER_PING_MS / 1000;
            if (pthread_cond_timedwait(&rd->cv, &rd->mu, &until) != 0 && !rd->head && !rd->stop) {
                /* Idle: check Redis, so that /health knows without asking it on an HTTP thread. */
                pthread_mutex_unlock(&rd->mu);
                char err[256];
                int ok = us_redis_ping(t->redis, err, sizeof(err)) == 0;
                set_health(rd, ok, err);
                pthread_mutex_lock(&rd->mu);
            }
        }
        if (!rd->head) { /* Stopping, and nothing left to do. */
            pthread_mutex_unlock(&rd->mu);
            break;
        }
        size_t nusers;
        us_read_job *jobs = take_jobs(rd, &nusers);
        rd->rounds_busy++;
        pthread_mutex_unlock(&rd->mu);
        run_round(t, jobs, nusers);
        pthread_mutex_lock(&rd->mu);
        rd->rounds_busy--;
        pthread_mutex_unlock(&rd->mu);
    }
    /* t->redis is freed by us_reader_free after the join: it may still be interrupting it. */
    free(t->buf.users);
    free(t->buf.out);
    free(t);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Inline reads.
 * ------------------------------------------------------------------------------------------ */

static void inline_store_destroy(inline_store *st)
{
    us_redis_free(st->redis);
    free(st->buf.users);
    free(st->buf.out);
    free(st);
}

/* Thread exit: the thread's store goes with it. */
static void inline_store_free(void *arg)
{
    inline_store *st = arg;
    if (!st) return;
    us_reader *rd = st->rd;
    pthread_mutex_lock(&rd->mu);
    if (st->prev)
        st->prev->next = st->next;
    else
        rd->inline_list = st->next;
    if (st->next) st->next->prev = st->prev;
    pthread_mutex_unlock(&rd->mu);
    inline_store_destroy(st);
}

/* The calling thread's store, made on first use; NULL (logged) when it cannot be made. */
static inline_store *inline_store_get(us_reader *rd)
{
    inline_store *st = pthread_getspecific(rd->inline_key);
    if (st) return st;
    char err[256];
    us_redis *redis = us_redis_new(&rd->inline_cfg, err, sizeof(err));
    if (!redis) { /* The reader threads made theirs from the same config: not expected. */
        us_warn("reader: no store for inline reads: %s", err);
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (!st) abort();
    st->rd = rd;
    st->redis = redis;
    pthread_mutex_lock(&rd->mu);
    st->next = rd->inline_list;
    if (st->next) st->next->prev = st;
    rd->inline_list = st;
    pthread_mutex_unlock(&rd->mu);
    pthread_setspecific(rd->inline_key, st);
    return st;
}

int us_reader_read_inline(us_reader *rd, us_read_job *job)
{
    if (job->n == 0 || job->n > READER_INLINE_MAX_USERS) return 0;
    /* A loop's store may be waiting for a flush's replies further up this very stack (its await
     * hook runs the loop): loops defer their reads instead. */
    inline_store *mine = pthread_getspecific(rd->inline_key);
    if (mine && mine->loop) return 0;
    /* Idle: nothing queued, no round trip and no other inline read under way. Under load one of
     * these holds nearly always, and the read joins the batch instead. Looser conditions (any
     * number of inline reads, one per HTTP thread) were measured and rejected: a blocked HTTP
     * thread stops serving its other connections, and at 8-64 connections 1-user gets fell to
     * 0.6-0.7x of the batched reader's rate (docs/perf/README.md). */
    pthread_mutex_lock(&rd->mu);
    int go = rd->head == NULL && rd->rounds_busy == 0 && rd->inline_busy == 0 &&
             rd->healthy == 1 && rd->inline_ok && !rd->stop;
    if (go) rd->inline_busy++;
    pthread_mutex_unlock(&rd->mu);
    if (!go) return 0;
    inline_store *st = inline_store_get(rd);
    char err[256] = "";
    int ok = st && us_redis_get(st->redis, job->users, job->n, job->out, err, sizeof(err)) == 0;
    pthread_mutex_lock(&rd->mu);
    rd->inline_busy--;
    if (!ok && st) rd->inline_ok = 0;
    pthread_mutex_unlock(&rd->mu);
    if (!ok) {
        if (st)
            us_debug("reader: inline read of %zu users failed, handing it to the reader: %s",
                     job->n, err);
        return 0;
    }
    us_metric_add(rd->m_inline, 1);
    job->failed = 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Reads deferred to the end of an event-loop pass.
 * ------------------------------------------------------------------------------------------ */

/* Hands a list of deferred jobs to the batched reader. */
static void submit_all(us_reader *rd, us_read_job *jobs)
{
    while (jobs) {
        us_read_job *next = jobs->next; /* us_reader_submit resets it. */
        if (jobs->handoff) jobs->handoff(jobs);
        us_reader_submit(rd, jobs);
        jobs = next;
    }
}

int us_reader_loop_begin(us_reader *rd, us_pipe_await_fn await, void *arg)
{
    inline_store *st = inline_store_get(rd);
    if (!st) return -1;
    st->loop = 1;
    us_redis_set_await(st->redis, await, arg);
    return 0;
}

int us_reader_defer(us_reader *rd, us_read_job *job)
{
    inline_store *st = pthread_getspecific(rd->inline_key);
    if (!st || !st->loop || job->n == 0 || st->dusers + job->n > MAX_USERS_PER_ROUND) return 0;
    pthread_mutex_lock(&rd->mu);
    int go = rd->healthy == 1 && rd->inline_ok && !rd->stop;
    pthread_mutex_unlock(&rd->mu);
    if (!go) return 0;
    job->next = NULL;
    job->failed = 0;
    if (st->dtail)
        st->dtail->next = job;
    else
        st->dhead = job;
    st->dtail = job;
    st->dusers += job->n;
    return 1;
}

int us_reader_flush(us_reader *rd)
{
    inline_store *st = pthread_getspecific(rd->inline_key);
    if (!st || !st->dhead) return 0;
    us_read_job *jobs = st->dhead;
    size_t nusers = st->dusers, njobs = 0;
    st->dhead = st->dtail = NULL;
    st->dusers = 0;
    for (us_read_job *j = jobs; j; j = j->next) njobs++;
    char err[256] = "";
    if (read_jobs(st->redis, &st->buf, jobs, nusers, err, sizeof(err)) == 0) {
        us_metric_add(rd->m_inline, njobs);
        finish_jobs(jobs, 0);
        return 1;
    }
    /* As an inline read that failed: the batched reader, with the configured timeouts, takes
     * them, and reads stay off this thread until one of its round trips succeeds. */
    us_debug("reader: %zu deferred read(s) of %zu users failed, handing them to the reader: %s",
             njobs, nusers, err);
    pthread_mutex_lock(&rd->mu);
    rd->inline_ok = 0;
    pthread_mutex_unlock(&rd->mu);
    submit_all(rd, jobs);
    return 1;
}

void us_reader_loop_end(us_reader *rd)
{
    inline_store *st = pthread_getspecific(rd->inline_key);
    if (!st) return;
    us_read_job *jobs = st->dhead;
    st->dhead = st->dtail = NULL;
    st->dusers = 0;
    submit_all(rd, jobs);
}

/* ---------------------------------------------------------------------------------------------
 * Life cycle.
 * ------------------------------------------------------------------------------------------ */

us_reader *us_reader_new(const us_config *cfg, int nthreads, char *err, size_t errlen)
{
    us_reader *rd = calloc(1, sizeof(*rd));
    if (!rd) abort();
    pthread_mutex_init(&rd->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rd->cv, &ca);
    pthread_condattr_destroy(&ca);
    rd->cfg = cfg;
    rd->healthy = -1;
    rd->inline_ok = 1;
    rd->inline_cfg = *cfg; /* Shallow: us_redis_new copies what it keeps. */
    int64_t *ct = &rd->inline_cfg.user_status.redis_connect_timeout_ms;
    int64_t *it = &rd->inline_cfg.user_status.redis_io_timeout_ms;
    if (*ct > READER_INLINE_TIMEOUT_MS) *ct = READER_INLINE_TIMEOUT_MS;
    if (*it > READER_INLINE_TIMEOUT_MS) *it = READER_INLINE_TIMEOUT_MS;
    if (pthread_key_create(&rd->inline_key, inline_store_free) != 0) abort();
    rd->m_inline = us_metric_counter("userstatus_query_reads_inline_total",
                                     "Read commands done inline on the HTTP thread (the reader "
                                     "was idle).");
    rd->m_batched = us_metric_counter("userstatus_query_reads_batched_total",
                                      "Read commands handed to the batched reader.");
    snprintf(rd->health_err, sizeof(rd->health_err), "no Redis round trip yet");
    rd->threads = calloc((size_t)nthreads, sizeof(pthread_t));
    rd->redis = calloc((size_t)nthreads, sizeof(us_redis *));
    if (!rd->threads || !rd->redis) abort();
    for (int i = 0; i < nthreads; i++) {
        reader_thread *t = calloc(1, sizeof(*t));
        if (!t) abort();
        t->rd = rd;
        t->redis = us_redis_new(cfg, err, errlen);
        rd->redis[i] = t->redis;
        if (!t->redis || pthread_create(&rd->threads[i], NULL, reader_main, t) != 0) {
            if (t->redis) snprintf(err, errlen, "cannot start a Redis reader thread");
            us_redis_free(t->redis);
            free(t);
            us_reader_free(rd);
            return NULL;
        }
        rd->nthreads++;
    }
    return rd;
}

void us_reader_submit(us_reader *rd, us_read_job *job)
{
    us_metric_add(rd->m_batched, 1);
    job->next = NULL;
    job->failed = 0;
    pthread_mutex_lock(&rd->mu);
    if (rd->tail)
        rd->tail->next = job;
    else
        rd->head = job;
    rd->tail = job;
    pthread_cond_signal(&rd->cv);
    pthread_mutex_unlock(&rd->mu);
}

int us_reader_health(us_reader *rd, char *err, size_t errlen)
{
    pthread_mutex_lock(&rd->mu);
    int ok = rd->healthy == 1;
    if (!ok) snprintf(err, errlen, "%s", rd->health_err);
    pthread_mutex_unlock(&rd->mu);
    return ok ? 0 : -1;
}

void us_reader_free(us_reader *rd)
{
    if (!rd) return;
    pthread_mutex_lock(&rd->mu);
    rd->stop = 1;
    pthread_cond_broadcast(&rd->cv);
    pthread_mutex_unlock(&rd->mu);
    /* A thread may be blocked on a frozen Redis for up to redis_io_timeout: make its read (and
     * those of the jobs still queued) fail now. */
    for (int i = 0; i < rd->nthreads; i++) us_redis_interrupt(rd->redis[i]);
    for (int i = 0; i < rd->nthreads; i++) pthread_join(rd->threads[i], NULL);
    for (int i = 0; i < rd->nthreads; i++) us_redis_free(rd->redis[i]);
    /* No thread reads inline any more (see reader.h): free their stores here, since threads that
     * outlive the reader would not run the key's destructor once it is deleted. */
    pthread_key_delete(rd->inline_key);
    while (rd->inline_list) {
        inline_store *st = rd->inline_list;
        rd->inline_list = st->next;
        inline_store_destroy(st);
    }
    free(rd->threads);
    free(rd->redis);
    pthread_cond_destroy(&rd->cv);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}
