/* Implementation of the batched Redis reader. */
#include "reader.h"

#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_USERS_PER_ROUND 8192 /* Users read in one round; bounds a round's latency. */

struct us_reader {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    us_read_job *head, *tail;
    int stop;
    pthread_t *threads;
    int nthreads;
    const us_config *cfg;
};

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
    k = 0;
    us_read_job *j = jobs;
    while (j) {
        us_read_job *next = j->next; /* j may be freed once its waiter is released. */
        if (rc != 0) {
            j->failed = 1;
            snprintf(j->err, sizeof(j->err), "%s", err);
        } else {
            memcpy(j->out, t->out + k, j->n * sizeof(*t->out));
        }
        k += j->n;
        us_ack_waiter_done(j->waiter);
        j = next;
    }
}

static void *reader_main(void *arg)
{
    reader_thread *t = arg;
    us_reader *rd = t->rd;
    for (;;) {
        pthread_mutex_lock(&rd->mu);
        while (!rd->head && !rd->stop) pthread_cond_wait(&rd->cv, &rd->mu);
        if (!rd->head) { /* Stopping, and nothing left to do. */
            pthread_mutex_unlock(&rd->mu);
            break;
        }
        size_t nusers;
        us_read_job *jobs = take_jobs(rd, &nusers);
        pthread_mutex_unlock(&rd->mu);
        run_round(t, jobs, nusers);
    }
    us_redis_free(t->redis);
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
    pthread_cond_init(&rd->cv, NULL);
    rd->cfg = cfg;
    rd->threads = calloc((size_t)nthreads, sizeof(pthread_t));
    if (!rd->threads) abort();
    for (int i = 0; i < nthreads; i++) {
        reader_thread *t = calloc(1, sizeof(*t));
        if (!t) abort();
        t->rd = rd;
        t->redis = us_redis_new(cfg, err, errlen);
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

void us_reader_free(us_reader *rd)
{
    if (!rd) return;
    pthread_mutex_lock(&rd->mu);
    rd->stop = 1;
    pthread_cond_broadcast(&rd->cv);
    pthread_mutex_unlock(&rd->mu);
    for (int i = 0; i < rd->nthreads; i++) pthread_join(rd->threads[i], NULL);
    free(rd->threads);
    pthread_cond_destroy(&rd->cv);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}
