/* The userstatus worker: Kafka consumer-group member that applies user status events to Redis. */
#ifndef US_WORKER_H
#define US_WORKER_H

#include "config.h"

#include <signal.h>

#define US_WORKER_EXIT_NOW 2

/* Runs one consumer until *stop becomes non-zero (set from a signal handler), then finishes the
 * batch in hand, commits, leaves the group and returns 0. metrics_port 0 disables /metrics and
 * /health. Returns -1 (after logging why) when it cannot start, and US_WORKER_EXIT_NOW when the
 * brokers could not be reached to leave the group: the process must then end with _exit() (the
 * Kafka handles are left running; their clean destruction would block). */
int us_worker_run(const us_config *cfg, int metrics_port, volatile sig_atomic_t *stop);

#endif
