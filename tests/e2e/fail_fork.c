/* Test helper preloaded (LD_PRELOAD) into userstatus-worker by tests/e2e/test_ops.py: the first
 * US_TEST_FAIL_FORKS calls of fork() fail with EAGAIN, as they do when the user's process limit
 * (RLIMIT_NPROC) or memory is exhausted; later calls fork for real. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

pid_t fork(void)
{
    static int failed;
    const char *n = getenv("US_TEST_FAIL_FORKS");
    if (n && failed < atoi(n)) {
        failed++;
        errno = EAGAIN;
        return -1;
    }
    pid_t (*real_fork)(void) = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    return real_fork ? real_fork() : -1;
}
