/* Stop signals without races (see signals.h). */
#include "signals.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/select.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void on_child(int sig)
{
    (void)sig; /* Only to end a pselect(); the supervisor reaps with waitpid(). */
}

static void handled_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGCHLD);
}

int us_signals_init(void)
{
    sigset_t set;
    handled_set(&set);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) return -1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) != 0) return -1;
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    return sigaction(SIGPIPE, &sa, NULL);
}

volatile sig_atomic_t *us_signals_stop_flag(void)
{
    return &stop_requested;
}

int us_signals_stop_requested(void)
{
    return stop_requested != 0;
}

void us_signals_wait(int64_t timeout_ms)
{
    sigset_t unblocked;
    pthread_sigmask(SIG_SETMASK, NULL, &unblocked);
    sigdelset(&unblocked, SIGTERM);
    sigdelset(&unblocked, SIGINT);
    sigdelset(&unblocked, SIGCHLD);
    struct timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = (time_t)(timeout_ms / 1000);
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
        tsp = &ts;
    }
    /* Returns -1/EINTR once a handler ran, 0 on timeout: either way the caller re-checks. */
    int saved = errno;
    pselect(0, NULL, NULL, NULL, tsp, &unblocked);
    errno = saved;
}

void us_signals_unblock(void)
{
    sigset_t set;
    handled_set(&set);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
