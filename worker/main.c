/* userstatus-worker: consumes user status events from Kafka and writes them to Redis.
 *
 * With worker.processes N > 1 the parent forks N consumer processes (one consumer-group member
 * each), restarts any that dies unexpectedly, and forwards SIGTERM/SIGINT to them. */
#include "cli.h"
#include "config.h"
#include "log.h"
#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHILD_RESTART_DELAY_S 1 /* Seconds before a crashed child is started again. */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static const us_cli_flag flags[] = {
    {"brokers", "kafka.brokers", "Kafka bootstrap servers"},
    {"redis-address", "user_status.redis_address", "Redis address(es), comma-separated"},
    {"log-level", "log_level", "debug, info, warn or error"},
    {"processes", "worker.processes", "consumer processes to run"},
    {"metrics-port", "worker.metrics_port", "port of /metrics and /health (0: off)"},
};

static pid_t spawn(const us_config *cfg, int index)
{
    pid_t pid = fork();
    if (pid < 0) {
        us_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int port = cfg->worker.metrics_port ? cfg->worker.metrics_port + index : 0;
        int rc = us_worker_run(cfg, port, &stop_requested);
        _exit(rc == 0 || rc == US_WORKER_EXIT_NOW ? 0 : 1);
    }
    us_info("started worker process %d (pid %d)", index, (int)pid);
    return pid;
}

/* Runs N children until a stop signal, then stops them all. Returns the exit code. */
static int supervise(const us_config *cfg)
{
    int n = cfg->worker.processes, failed = 0;
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    if (!pids) return 1;
    for (int i = 0; i < n; i++) pids[i] = spawn(cfg, i);

    while (!stop_requested) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (pids[i] != pid) continue;
            pids[i] = 0;
            if (stop_requested) break;
            us_error("worker process %d (pid %d) exited (%s %d); restarting it", i, (int)pid,
                     WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            sleep(CHILD_RESTART_DELAY_S);
            pids[i] = spawn(cfg, i);
        }
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
    install_signals();
    if (cfg.worker.processes > 1)
        rc = supervise(&cfg);
    else
        rc = us_worker_run(&cfg, cfg.worker.metrics_port, &stop_requested);
    us_config_free(&cfg);
    if (rc == US_WORKER_EXIT_NOW) _exit(0);
    return rc == 0 ? 0 : 1;
}
