/* userstatus-worker: consumes user status events from Kafka and writes them to Redis.
 *
 * With worker.processes N > 1 the parent forks N consumer processes (one consumer-group member
 * each), restarts any that dies unexpectedly or could not be forked, and forwards SIGTERM/SIGINT
 * to them. */
#include "cli.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "signals.h"
#include "worker.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Milliseconds before a child that died, or could not be forked, is started again. */
#define CHILD_RESTART_DELAY_MS 1000

static const us_cli_flag flags[] = {
    {"brokers", "kafka.brokers", "Kafka bootstrap servers"},
    {"redis-address", "user_status.redis_address", "Redis address(es), comma-separated"},
    {"log-level", "log_level", "debug, info, warn or error"},
    {"processes", "worker.processes", "consumer processes to run"},
    {"metrics-port", "worker.metrics_port", "port of /metrics and /health (0: off)"},
};

/* Starts worker process index. Returns its pid, or -1 when fork failed (logged). */
static pid_t spawn(const us_config *cfg, int index)
{
    pid_t pid = fork();
    if (pid < 0) {
        us_error("starting worker process %d: fork: %s; trying again in %d ms", index,
                 strerror(errno), CHILD_RESTART_DELAY_MS);
        return -1;
    }
    if (pid == 0) {
        us_signals_unblock(); /* The consumer loop polls the stop flag. */
        int port = cfg->worker.metrics_port ? cfg->worker.metrics_port + index : 0;
        int rc = us_worker_run(cfg, port, us_signals_stop_flag());
        _exit(rc == 0 || rc == US_WORKER_EXIT_NOW ? 0 : 1);
    }
    us_info("started worker process %d (pid %d)", index, (int)pid);
    return pid;
}

/* Reaps every child that exited; each one's slot gets a restart time. */
static void reap_children(pid_t *pids, int64_t *restart_at, int n)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < n; i++) {
            if (pids[i] != pid) continue;
            pids[i] = 0;
            restart_at[i] = us_monotonic_ms() + CHILD_RESTART_DELAY_MS;
            us_error("worker process %d (pid %d) exited (%s %d); restarting it in %d ms", i,
                     (int)pid, WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                     CHILD_RESTART_DELAY_MS);
        }
    }
}

/* Runs N children until a stop signal, then stops them all. A child that exits, or that could
 * not be forked, is started again after CHILD_RESTART_DELAY_MS. Signals are blocked except while
 * waiting (us_signals_wait), so a stop or a child exit is never missed. Returns the exit code. */
static int supervise(const us_config *cfg)
{
    int n = cfg->worker.processes, failed = 0;
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    int64_t *restart_at = calloc((size_t)n, sizeof(int64_t));
    if (!pids || !restart_at) {
        us_error("out of memory for %d worker processes", n);
        free(pids);
        free(restart_at);
        return 1;
    }
    while (!us_signals_stop_requested()) {
        reap_children(pids, restart_at, n);
        int64_t now = us_monotonic_ms(), wake = -1;
        for (int i = 0; i < n && !us_signals_stop_requested(); i++) {
            if (pids[i] > 0) continue;
            if (now >= restart_at[i]) {
                pids[i] = spawn(cfg, i);
                if (pids[i] > 0) continue;
                pids[i] = 0;
                restart_at[i] = now + CHILD_RESTART_DELAY_MS;
            }
            if (wake < 0 || restart_at[i] - now < wake) wake = restart_at[i] - now;
        }
        if (!us_signals_stop_requested()) us_signals_wait(wake);
    }
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], SIGTERM);
    for (int i = 0; i < n; i++) {
        if (pids[i] <= 0) continue;
        int status;
        while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    }
    free(pids);
    free(restart_at);
    return failed;
}

int main(int argc, char **argv, char **envp)
{
    us_log_set_tag("worker");
    us_config cfg;
    int check_only;
    int rc = us_cli_load(argc, argv, envp, "userstatus-worker", flags,
                         sizeof(flags) / sizeof(flags[0]), &cfg, &check_only);
    if (rc != 0) {
        us_config_free(&cfg);
        return rc == 2 ? 0 : 1;
    }
    if (check_only) {
        printf("configuration is valid\n");
        us_config_free(&cfg);
        return 0;
    }
    if (us_signals_init() != 0) {
        us_error("installing signal handlers: %s", strerror(errno));
        us_config_free(&cfg);
        return 1;
    }
    if (cfg.worker.processes > 1) {
        rc = supervise(&cfg);
    } else {
        us_signals_unblock(); /* The consumer loop polls the stop flag. */
        rc = us_worker_run(&cfg, cfg.worker.metrics_port, us_signals_stop_flag());
    }
    us_config_free(&cfg);
    if (rc == US_WORKER_EXIT_NOW) _exit(0);
    return rc == 0 ? 0 : 1;
}
