/* Batched Redis reads for the HTTP threads.
 *
 * An HTTP thread that needs statuses hands a job to the reader and suspends the connection; a
 * reader thread takes every job queued meanwhile and reads all their users in one pipelined round
 * trip per Redis node, then wakes each job's waiter. Under load many requests share a round trip,
 * so the HTTP threads never sit idle waiting for Redis. */
#ifndef US_READER_H
#define US_READER_H

#include "config.h"
#include "producer.h"
#include "redis_store.h"

#include <stddef.h>

/* One request's (or one batch command's) read. */
typedef struct us_read_job {
    const us_user_ref *users;
    size_t n;
    us_status *out;      /* n statuses, filled on success. */
    int failed;          /* Set instead when the read failed; err says why. */
    char err[256];
    us_ack_waiter *waiter; /* Counts this job (us_ack_waiter_add before submitting). */
    struct us_read_job *next;
} us_read_job;

typedef struct us_reader us_reader;

/* Starts nthreads reader threads, each with its own Redis connections. NULL with err set. */
us_reader *us_reader_new(const us_config *cfg, int nthreads, char *err, size_t errlen);

/* Queues a job. Its waiter is released (us_ack_waiter_done) once the job is done. */
void us_reader_submit(us_reader *rd, us_read_job *job);

/* Finishes the queued jobs, stops the threads and frees. Accepts NULL. */
void us_reader_free(us_reader *rd);

#endif
