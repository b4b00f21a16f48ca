/* Stop signals: a signal that arrives before the wait starts is not lost (the race of
 * `while (!stop) pause();`), a child's exit wakes the waiter, and a timeout ends the wait. A
 * watchdog alarm kills the test if a wait never returns. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "clock.h"
#include "signals.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define WATCHDOG_S 10 /* Seconds before a hung wait kills the test (SIGALRM's default action). */

static void test_stop_signal_before_the_wait_ends_it_at_once(void **state)
{
    (void)state;
    assert_false(us_signals_stop_requested());
    raise(SIGTERM); /* blocked: stays pending, the handler has not run */
    assert_false(us_signals_stop_requested());
    alarm(WATCHDOG_S);
    int64_t t0 = us_monotonic_ms();
    while (!us_signals_stop_requested()) us_signals_wait(-1);
    alarm(0);
    assert_true(us_monotonic_ms() - t0 < 1000);
    assert_int_equal(*us_signals_stop_flag(), 1);
}

static void test_child_exit_wakes_the_waiter(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(0);
    alarm(WATCHDOG_S);
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0) us_signals_wait(-1);
    alarm(0);
    assert_true(WIFEXITED(status));
}

static void test_wait_ends_at_its_timeout(void **state)
{
    (void)state;
    alarm(WATCHDOG_S);
    int64_t t0 = us_monotonic_ms();
    us_signals_wait(50);
    int64_t took = us_monotonic_ms() - t0;
    alarm(0);
    assert_true(took >= 40 && took < 2000);
}

int main(void)
{
    if (us_signals_init() != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_ends_at_its_timeout),
        cmocka_unit_test(test_child_exit_wakes_the_waiter),
        cmocka_unit_test(test_stop_signal_before_the_wait_ends_it_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
