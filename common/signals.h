/* Stop signals for the programs' main loops, without the classic races.
 *
 * SIGTERM and SIGINT set a stop flag; SIGCHLD only wakes a waiter (the worker's supervisor);
 * SIGPIPE is ignored (a peer closing a socket is an error return, not a death). The three
 * signals stay blocked except while us_signals_wait() waits (pselect unblocks them atomically),
 * so a signal that arrives between checking the flag and starting to wait is not lost: it stays
 * pending and ends the wait at once. Threads created after us_signals_init() inherit the blocked
 * mask, so libmicrohttpd's and librdkafka's threads never run the handlers. */
#ifndef US_SIGNALS_H
#define US_SIGNALS_H

#include <signal.h>
#include <stdint.h>

/* Installs the handlers, ignores SIGPIPE and blocks SIGTERM, SIGINT and SIGCHLD in the calling
 * thread. Call at the start of main, before any thread is created. Returns 0, or -1 with errno
 * set. */
int us_signals_init(void);

/* The flag SIGTERM and SIGINT set (for loops that poll it). */
volatile sig_atomic_t *us_signals_stop_flag(void);

/* Whether SIGTERM or SIGINT has arrived. */
int us_signals_stop_requested(void);

/* Waits until one of the signals is handled (stop or child exit), or timeout_ms milliseconds
 * passed (timeout_ms < 0: no limit). Returns at once when one is already pending. The caller
 * re-checks what it waits for (the stop flag, waitpid). */
void us_signals_wait(int64_t timeout_ms);

/* Unblocks the signals in the calling thread: for a thread that polls the stop flag with short
 * timeouts instead of waiting in us_signals_wait() (the worker's consumer loop), and for a forked
 * child that does so. */
void us_signals_unblock(void);

#endif
