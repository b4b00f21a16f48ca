/* Implementation of the batched Redis reader. */
#include "reader.h"

#include "clock.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_USERS_PER_ROUND 8192 /* Users read in one round; bounds a round's latency. */
#define READER_PING_MS 1000      /* An idle reader thread PINGs Redis this often. Milliseconds. */

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
};

/* Records the outcome of a round trip for us_reader_health. */
static void set_health(us_reader *rd, int ok, const char *err)
{
    pthread_mutex_lock(&rd->mu);
    int was = rd->healthy;
    rd->healthy = ok;
    if (!ok) snprintf(rd->health_err, sizeof(rd->health_err), "%s", err);
    pthread_mutex_unlock(&rd->mu);
    if (was != 0 && !ok) us_warn("reader: Redis is unhealthy: %s", err); /* Changes only. */
    if (was == 0 && ok) us_info("reader: Redis is healthy again");
}

/* One reader thread's own connections and scratch arrays. */
typedef struct reader_thread {
    us_reader *rd;
    us_redis *redis;
    us_user_ref *users;
    us_status *out;
    size_t cap;
} reader_thread;

static void reserve(reader_thread *t, size_t n)
{
    if (n <= t->cap) return;
    free(t->users);
    free(t->out);
    t->users = malloc(n * sizeof(*t->users));
    t->out = malloc(n * sizeof(*t->out));
    if (!t->users || !t->out) abort();
    t->cap = n;
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

static void run_round(reader_thread *t, us_read_job *jobs, size_t nusers)
{
    reserve(t, nusers ? nusers : 1);
    size_t k = 0;
    for (us_read_job *j = jobs; j; j = j->next) {
        memcpy(t->users + k, j->users, j->n * sizeof(*t->users));
        k += j->n;
    }
    char err[256];
    int rc = us_redis_get(t->redis, t->users, nusers, t->out, err, sizeof(err));
    if (rc != 0) us_error("get_user_status of %zu users: %s", nusers, err);
    set_health(t->rd, rc == 0, err);
    k = 0;
    us_read_job *j = jobs;
    while (j) {
        us_read_job *next = j->next; /* j may be freed once done runs. */
        if (rc != 0)
            j->failed = 1;
        else
            memcpy(j->out, t->out + k, j->n * sizeof(*t->out));
        k += j->n;
        j->done(j);
        j = next;
    }
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
        pthread_mutex_unlock(&rd->mu);
        run_round(t, jobs, nusers);
    }
    /* t->redis is freed by us_reader_free after the join: it may still be interrupting it. */
    free(t->users);
    free(t->out);
    free(t);
    return NULL;
}

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
    free(rd->threads);
    free(rd->redis);
    pthread_cond_destroy(&rd->cv);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}
