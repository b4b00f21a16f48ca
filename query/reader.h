/* Batched Redis reads for the front ends, three ways.
 *
 * - Deferred to an event loop's flush (us_reader_defer, us_reader_flush): the front ends' own
 *   threads (HTTP event loops, gRPC queue threads) keep the reads the requests of one pass started
 *   and read them all in one pipelined round trip per Redis node at the end of the pass, on that
 *   thread, over connections of its own: no handoff to another thread. An HTTP loop serves its other
 *   connections while Redis answers (the await hook).
 * - Batched on reader threads (us_reader_submit): a reader thread takes every job queued meanwhile
 *   and reads them in one round trip, then runs each job's done callback. For reads from other
 *   threads, and for deferred reads whose round trip failed or took longer than
 *   READER_INLINE_TIMEOUT_MS: the reader threads have the configured redis_io_timeout.
 * - Inline (us_reader_read_inline): a small read from a thread that is no loop, when the reader is
 *   idle, done at once on the caller's thread. */
#ifndef US_READER_H
#define US_READER_H

#include "config.h"
#include "redis_store.h"

#include <stddef.h>

#ifndef READER_INLINE_MAX_USERS
#define READER_INLINE_MAX_USERS 8 /* Users of a read done inline at most; larger reads batch. */
#endif
#define READER_INLINE_TIMEOUT_MS 50 /* Connect/read/write timeout of inline reads. Milliseconds. */

/* One command's read. The reader logs why a read failed; the job only learns that it did, so that
 * no request sees another one's users or the Redis topology. */
typedef struct us_read_job {
    const us_user_ref *users;
    size_t n;
    us_status *out; /* n statuses, filled on success. */
    int failed;     /* Set instead when the read failed. */
    void (*done)(struct us_read_job *job); /* Called once the job is finished, from a reader
                                            * thread; the job may be freed as soon as it runs. */
    /* A deferred job (us_reader_defer) is about to go to a reader thread instead of its loop's
     * flush; called on the loop's thread. NULL: nothing to do. */
    void (*handoff)(struct us_read_job *job);
    void *arg;      /* The submitter's. */
    struct us_read_job *next;
} us_read_job;

typedef struct us_reader us_reader;

/* Starts nthreads reader threads, each with its own Redis connections. NULL with err set. */
us_reader *us_reader_new(const us_config *cfg, int nthreads, char *err, size_t errlen);

/* Queues a job; job->done is called once it is finished. */
void us_reader_submit(us_reader *rd, us_read_job *job);

/* Reads job's users on the calling thread when that is cheaper than batching: job->n is at most
 * READER_INLINE_MAX_USERS, no job is queued, Redis was healthy at the last round trip and no inline
 * read timed out since. Returns 1 when the job is finished and its statuses are in job->out (done
 * is not called), 0 when the caller must us_reader_submit it instead; an inline read that failed
 * also returns 0 (reads are idempotent; the reader then logs the failure, if it persists). Blocks
 * the caller at most READER_INLINE_TIMEOUT_MS per connect and per socket read or write. Each
 * calling thread gets its own Redis connections, freed when the thread exits or with the reader. */
int us_reader_read_inline(us_reader *rd, us_read_job *job);

/* Event-loop threads (the HTTP front end's) defer their reads to the end of each pass of their
 * loop, so that every request the pass parsed shares one round trip, done on the loop's own
 * thread: no handoff to a reader thread. us_reader_loop_begin marks the calling thread as such a
 * loop (0, or -1 when its Redis store cannot be made). On it, us_reader_defer keeps the job for
 * the thread's next us_reader_flush and returns 1, under the conditions of inline reads (Redis
 * healthy, no inline or deferred read failed since); otherwise, or on any other thread, it returns
 * 0 and the caller submits the job. us_reader_flush reads every deferred job in one round trip
 * (READER_INLINE_TIMEOUT_MS timeouts) and runs their done callbacks on the calling thread; when
 * the round trip fails the jobs go to the batched reader instead. Returns 1 when it had jobs.
 * While the replies are on their way the flush calls await (us_pipe_await_fn, may be NULL): the
 * loop serves its other connections meanwhile, and reads they start wait for the next flush. */
int us_reader_loop_begin(us_reader *rd, us_pipe_await_fn await, void *arg);
int us_reader_defer(us_reader *rd, us_read_job *job);
int us_reader_flush(us_reader *rd);
/* The loop's last pass is over: reads it still deferred (started while the last flush awaited
 * Redis) go to the batched reader, which finishes them. */
void us_reader_loop_end(us_reader *rd);

/* 0 when the last Redis round trip of the reader (a read, or the PING an idle reader thread sends
 * every READER_PING_MS) succeeded, else -1 with the reason in err. Never blocks on Redis. */
int us_reader_health(us_reader *rd, char *err, size_t errlen);

/* Finishes the queued jobs, stops the threads and frees, with the inline connections of every
 * thread: call it only once no other thread can call us_reader_read_inline. Accepts NULL. */
void us_reader_free(us_reader *rd);

#endif
