/* Implementation of the event-loop driven libmicrohttpd daemons (http_loop.h).
 *
 * The listening socket is made by the first daemon (MHD_OPTION_SOCK_ADDR); the others get a
 * duplicate of it (MHD_OPTION_LISTEN_SOCKET), so that each daemon closes its own descriptor. It is
 * non-blocking: every loop is woken by a new connection and the ones that lose the race to accept
 * it get EAGAIN, as libmicrohttpd's own thread pool does.
 *
 * A loop waits in poll(2) on its daemon's epoll descriptor and on its own eventfd, written when
 * another thread resumed one of its connections, and at stop. The wait is bounded by
 * MHD_get_timeout (connection timeouts) and LOOP_MAX_WAIT_MS; there is none when the pass hook
 * or a resume on the loop's own thread left work for libmicrohttpd.
 *
 * Lifetimes: the daemons outlive their threads: us_http_loops_stop joins the threads first, then
 * stops the daemons from the calling thread (allowed for daemons without internal threads). */
#include "http_loop.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LOOP_MAX_WAIT_MS 1000 /* A loop's longest wait between passes. Milliseconds. */

typedef struct us_http_loop {
    us_http_loops *set;
    struct MHD_Daemon *daemon;
    int wake;    /* eventfd: written by other threads' resumes and at stop. */
    int resumed; /* A connection was resumed on this loop's thread; only that thread's. */
    pthread_t thread;
    int started; /* thread is running (joined at stop). */
} loop;

struct us_http_loops {
    us_http_loop_spec spec;
    loop *loops;
    unsigned n;
    atomic_int stop;
};

static _Thread_local loop *current; /* The loop of the calling thread. */

us_http_loop *us_http_loop_current(void)
{
    return current;
}

static void wake(loop *l)
{
    uint64_t one = 1;
    if (write(l->wake, &one, sizeof(one)) < 0 && errno != EAGAIN)
        us_warn("HTTP loop: eventfd: %s", strerror(errno));
}

void us_http_loop_resume(us_http_loop *l, struct MHD_Connection *conn)
{
    MHD_resume_connection(conn);
    if (!l) return;
    if (l == current)
        l->resumed = 1;
    else
        wake(l);
}

/* Empties the loop's eventfd after poll saw it readable. */
static void drain_wake(loop *l)
{
    uint64_t n;
    if (read(l->wake, &n, sizeof(n)) < 0 && errno != EAGAIN)
        us_warn("HTTP loop: eventfd: %s", strerror(errno));
}

/* How long the loop may wait for its daemon: MHD_get_timeout, at most max_ms. */
static int daemon_wait_ms(loop *l, int max_ms)
{
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(l->daemon, &to) == MHD_YES && to < (MHD_UNSIGNED_LONG_LONG)max_ms)
        return (int)to;
    return max_ms;
}

void us_http_loop_await(const int *fds, size_t nfds, int timeout_ms)
{
    loop *l = current;
    if (!l || nfds == 0) return;
    enum { MAX_AWAIT = 14 };
    struct pollfd p[2 + MAX_AWAIT];
    size_t n = nfds < MAX_AWAIT ? nfds : MAX_AWAIT; /* More: the reads block for the rest. */
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    p[0] = (struct pollfd){.fd = info->epoll_fd, .events = POLLIN};
    p[1] = (struct pollfd){.fd = l->wake, .events = POLLIN};
    for (size_t i = 0; i < n; i++) p[2 + i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    int64_t deadline = us_monotonic_ms() + timeout_ms;
    size_t left = n;
    while (left > 0 && !atomic_load_explicit(&l->set->stop, memory_order_relaxed)) {
        int64_t now = us_monotonic_ms();
        if (now >= deadline) return;
        /* Not MHD_get_timeout: it says 0 while requests wait for the very replies awaited here
         * (api.c's handler is called again until they are in), and connection timeouts are
         * seconds, far beyond this wait. */
        int wait_ms = l->resumed ? 0 : (int)(deadline - now);
        if (poll(p, 2 + n, wait_ms) < 0 && errno != EINTR) return;
        for (size_t i = 0; i < n; i++)
            if (p[2 + i].fd >= 0 && (p[2 + i].revents & (POLLIN | POLLERR | POLLHUP))) {
                p[2 + i].fd = -1; /* Readable: poll ignores it from now on. */
                left--;
            }
        if (p[1].revents & POLLIN) drain_wake(l);
        if (l->resumed || (p[0].revents & POLLIN) || (p[1].revents & POLLIN)) {
            l->resumed = 0;
            MHD_run(l->daemon);
        }
    }
}

static void *loop_main(void *arg)
{
    loop *l = arg;
    us_http_loops *set = l->set;
    current = l;
    if (set->spec.thread_begin) set->spec.thread_begin(set->spec.hook_arg);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    struct pollfd fds[2] = {{.fd = info->epoll_fd, .events = POLLIN},
                            {.fd = l->wake, .events = POLLIN}};
    int wait_ms = 0;
    while (!atomic_load_explicit(&set->stop, memory_order_relaxed)) {
        if (wait_ms != 0) {
            if (poll(fds, 2, wait_ms) < 0 && errno != EINTR) {
                us_error("HTTP loop: poll: %s", strerror(errno));
                break;
            }
            if (fds[1].revents & POLLIN) drain_wake(l);
        }
        l->resumed = 0;
        MHD_run(l->daemon);
        int busy = set->spec.pass ? set->spec.pass(set->spec.hook_arg) : 0;
        busy |= l->resumed;
        wait_ms = busy ? 0 : daemon_wait_ms(l, LOOP_MAX_WAIT_MS);
    }
    if (set->spec.thread_end) set->spec.thread_end(set->spec.hook_arg);
    return NULL;
}

static struct MHD_Daemon *start_daemon(const us_http_loop_spec *spec, unsigned limit,
                                       int listen_fd)
{
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (spec->addr->sa_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (listen_fd >= 0)
        return MHD_start_daemon(flags, 0, NULL, NULL, spec->handler, spec->handler_arg,
                                MHD_OPTION_LISTEN_SOCKET, listen_fd,
                                MHD_OPTION_CONNECTION_MEMORY_LIMIT, spec->connection_memory,
                                MHD_OPTION_CONNECTION_LIMIT,
                                limit, MHD_OPTION_CONNECTION_TIMEOUT, spec->connection_timeout_s,
                                MHD_OPTION_NOTIFY_COMPLETED, spec->completed, NULL, MHD_OPTION_END);
    return MHD_start_daemon(flags, 0, NULL, NULL, spec->handler, spec->handler_arg,
                            MHD_OPTION_SOCK_ADDR, spec->addr, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                            spec->connection_memory, MHD_OPTION_CONNECTION_LIMIT, limit,
                            MHD_OPTION_CONNECTION_TIMEOUT, spec->connection_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, spec->completed, NULL,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
}

us_http_loops *us_http_loops_start(const us_http_loop_spec *spec, char *err, size_t errlen)
{
    us_http_loops *set = calloc(1, sizeof(*set));
    unsigned n = spec->threads ? spec->threads : 1;
    if (n > spec->max_connections) n = spec->max_connections ? spec->max_connections : 1;
    if (!set || !(set->loops = calloc(n, sizeof(loop)))) abort();
    set->spec = *spec;
    set->n = n;
    for (unsigned i = 0; i < n; i++) set->loops[i].wake = -1;
    int listen_fd = -1, failed = 0;
    for (unsigned i = 0; i < n && !failed; i++) {
        loop *l = &set->loops[i];
        l->set = set;
        l->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (l->wake < 0) {
            snprintf(err, errlen, "eventfd: %s", strerror(errno));
            failed = 1;
            break;
        }
        int fd = -1;
        if (i > 0 && (fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
            snprintf(err, errlen, "dup of the listening socket: %s", strerror(errno));
            failed = 1;
            break;
        }
        /* Each daemon's share of the connection limit; they add up to it. */
        unsigned limit = spec->max_connections / n + (i < spec->max_connections % n);
        l->daemon = start_daemon(spec, limit, fd);
        if (!l->daemon) {
            if (fd >= 0) close(fd);
            snprintf(err, errlen, "cannot start libmicrohttpd (address in use?)");
            failed = 1;
            break;
        }
        if (i == 0) {
            listen_fd = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_LISTEN_FD)->listen_fd;
            int fl = fcntl(listen_fd, F_GETFL);
            if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
                snprintf(err, errlen, "listening socket: %s", strerror(errno));
                failed = 1;
            }
        }
    }
    for (unsigned i = 0; i < n && !failed; i++) {
        loop *l = &set->loops[i];
        if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
            snprintf(err, errlen, "cannot start an HTTP thread");
            failed = 1;
            break;
        }
        l->started = 1;
    }
    if (failed) {
        us_http_loops_stop(set);
        return NULL;
    }
    return set;
}

void us_http_loops_stop(us_http_loops *set)
{
    if (!set) return;
    atomic_store(&set->stop, 1);
    for (unsigned i = 0; i < set->n; i++)
        if (set->loops[i].started) wake(&set->loops[i]);
    for (unsigned i = 0; i < set->n; i++)
        if (set->loops[i].started) pthread_join(set->loops[i].thread, NULL);
    for (unsigned i = set->n; i-- > 0;) {
        if (set->loops[i].daemon) MHD_stop_daemon(set->loops[i].daemon);
        if (set->loops[i].wake >= 0) close(set->loops[i].wake);
    }
    free(set->loops);
    free(set);
}
