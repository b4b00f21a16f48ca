/* Batched Redis reads for the HTTP threads.
 *
 * An HTTP thread that needs statuses hands a job to the reader and suspends the connection; a
 * reader thread takes every job queued meanwhile and reads all their users in one pipelined round
 * trip per Redis node, then wakes each job's waiter. Under load many requests share a round trip,
 * so the HTTP threads never sit idle waiting for Redis. */
#ifndef US_READER_H
#define US_READER_H

#include "config.h"
#include "redis_store.h"

#include <stddef.h>

/* One command's read. The reader logs why a read failed; the job only learns that it did, so that
 * no request sees another one's users or the Redis topology. */
typedef struct us_read_job {
    const us_user_ref *users;
    size_t n;
    us_status *out; /* n statuses, filled on success. */
    int failed;     /* Set instead when the read failed. */
    void (*done)(struct us_read_job *job); /* Called once the job is finished, from a reader
                                            * thread; the job may be freed as soon as it runs. */
    void *arg;      /* The submitter's. */
    struct us_read_job *next;
} us_read_job;

typedef struct us_reader us_reader;

/* Starts nthreads reader threads, each with its own Redis connections. NULL with err set. */
us_reader *us_reader_new(const us_config *cfg, int nthreads, char *err, size_t errlen);

/* Queues a job; job->done is called once it is finished. */
void us_reader_submit(us_reader *rd, us_read_job *job);

/* 0 when the last Redis round trip of the reader (a read, or the PING an idle reader thread sends
 * every READER_PING_MS) succeeded, else -1 with the reason in err. Never blocks on Redis. */
int us_reader_health(us_reader *rd, char *err, size_t errlen);

/* Finishes the queued jobs, stops the threads and frees. Accepts NULL. */
void us_reader_free(us_reader *rd);

#endif
