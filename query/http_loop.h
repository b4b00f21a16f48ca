/* libmicrohttpd daemons driven by event loops of our own, one daemon per thread.
 *
 * libmicrohttpd's internal threads give no way to run code between passes of their event loop.
 * The query service needs one: the reads that the requests of a pass started are sent to Redis
 * together, on that thread, at the end of the pass (reader.h, us_reader_flush), instead of being
 * handed to another thread. Here each thread runs a daemon in external-epoll mode (MHD_run) and
 * calls the pass hook after each MHD_run; all daemons accept from one listening socket.
 *
 * Threads: the hooks run on the loop threads. Connections may be resumed from any thread, with
 * us_http_loop_resume: libmicrohttpd 0.9.75 wakes no external event loop when a connection is
 * resumed (it drops MHD_USE_ITC without an internal thread), so that wakes the connection's loop. */
#ifndef US_HTTP_LOOP_H
#define US_HTTP_LOOP_H

#include <microhttpd.h>
#include <stddef.h>

typedef struct us_http_loops us_http_loops;
typedef struct us_http_loop us_http_loop; /* One thread's. */

typedef struct us_http_loop_spec {
    const struct sockaddr *addr; /* Where to listen (IPv4 or IPv6). */
    unsigned threads;            /* Daemons, each on its own thread; at least 1. */
    unsigned max_connections;    /* Over all daemons. */
    unsigned connection_timeout_s;
    size_t connection_memory;    /* libmicrohttpd's per connection; bounds the header block. */
    MHD_AccessHandlerCallback handler;
    void *handler_arg;
    MHD_RequestCompletedCallback completed;
    /* Called on each loop thread before its first pass, and after its last. */
    void (*thread_begin)(void *arg);
    void (*thread_end)(void *arg);
    /* Called on the loop thread after each pass; returns 1 when it did work that libmicrohttpd
     * must see at once (resumed connections), so that the next pass does not wait. */
    int (*pass)(void *arg);
    void *hook_arg;
} us_http_loop_spec;

/* The loop running on the calling thread (the one serving the connection a handler is called
 * for), or NULL on any other thread. */
us_http_loop *us_http_loop_current(void);

/* MHD_resume_connection, and makes the connection's loop process it: at once when called from
 * another thread, after the current pass when called on the loop's own thread. loop is the
 * connection's, from us_http_loop_current in its handler; NULL for a daemon with threads of its
 * own (which its ITC wakes). */
void us_http_loop_resume(us_http_loop *loop, struct MHD_Connection *conn);

/* Serves the calling thread's loop (libmicrohttpd passes, without the pass hook) until each of fds
 * is readable, timeout_ms passed or the loops stop. For a pass hook that waits on sockets of its
 * own, such as Redis replies. Returns at once on a thread that runs no loop. */
void us_http_loop_await(const int *fds, size_t nfds, int timeout_ms);

/* Starts the daemons and their threads. NULL with err set. */
us_http_loops *us_http_loops_start(const us_http_loop_spec *spec, char *err, size_t errlen);

/* Stops the loops (each finishes its pass), then the daemons, which close their connections, and
 * frees. Accepts NULL. */
void us_http_loops_stop(us_http_loops *loops);

#endif
