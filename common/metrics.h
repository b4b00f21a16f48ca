/* Process metrics in the Prometheus text format.
 *
 * Metrics are registered once at start-up (not thread-safe) and then updated from any thread with
 * relaxed atomics. A name may carry labels: `userstatus_events_total{result="applied"}`; metrics of
 * one family share HELP and TYPE lines, so register them next to each other. */
#ifndef US_METRICS_H
#define US_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct us_metric us_metric;

/* Registers a counter or a gauge. name and help must outlive the process (string literals). */
us_metric *us_metric_counter(const char *name, const char *help);
us_metric *us_metric_gauge(const char *name, const char *help);

void us_metric_add(us_metric *m, uint64_t n);
void us_metric_set(us_metric *m, int64_t v);
uint64_t us_metric_value(const us_metric *m);

/* Renders every metric; returns a malloc'd NUL-terminated string (caller frees) and its length. */
char *us_metrics_render(size_t *len);

/* Frees the registry (at exit, so that leak checkers stay quiet). */
void us_metrics_free_all(void);

#endif
