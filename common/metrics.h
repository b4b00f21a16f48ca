/* Process metrics in the Prometheus text format (exposition format 0.0.4).
 *
 * Metrics are registered once at start-up (not thread-safe) and then updated from any thread with
 * relaxed atomics: no lock is ever taken on the hot path. A name may carry labels:
 * `userstatus_events_total{result="applied"}`; metrics of one family share HELP and TYPE lines, so
 * register them next to each other (the first registration's help text is the one shown).
 *
 * Kinds:
 * - counter: us_metric_counter, then us_metric_add. Rendered as an integer.
 * - gauge: us_metric_gauge, then us_metric_set / us_metric_gauge_add (an int64 that may go down);
 *   or us_metric_gauge_func, whose callback is read at scrape time (a double); or
 *   us_metric_gauge_collector, whose callback writes any number of labelled samples of one
 *   family at scrape time (for label values known only at run time, e.g. the `partition` of each
 *   assigned partition).
 * - histogram: us_metric_histogram with fixed upper bounds (seconds for durations, by Prometheus
 *   convention), then us_metric_observe. Rendered as cumulative `<family>_bucket{...,le="<bound>"}`
 *   lines ending with `le="+Inf"`, then `<family>_sum` and `<family>_count`; the labels of the
 *   registered name come first in every line. `_count` always equals the `+Inf` bucket of the same
 *   scrape; `_sum` may lag an observation that is under way.
 *
 * Values that are doubles (histogram bounds and sums, gauge callbacks) are printed as integers when
 * whole (`500000`), else in the shortest form that reads back as the same double (`0.005`, `2.5`,
 * `1e-06`); or `+Inf`, `-Inf`, `NaN`.
 *
 * Example:
 *     static const double bounds[] = {0.001, 0.01, 0.1, 1};
 *     us_metric *h = us_metric_histogram("userstatus_x_seconds{role=\"read\"}", "X.", bounds, 4);
 *     us_metric_observe(h, 0.004);
 * renders
 *     # HELP userstatus_x_seconds X.
 *     # TYPE userstatus_x_seconds histogram
 *     userstatus_x_seconds_bucket{role="read",le="0.001"} 0
 *     userstatus_x_seconds_bucket{role="read",le="0.01"} 1
 *     userstatus_x_seconds_bucket{role="read",le="0.1"} 1
 *     userstatus_x_seconds_bucket{role="read",le="1"} 1
 *     userstatus_x_seconds_bucket{role="read",le="+Inf"} 1
 *     userstatus_x_seconds_sum{role="read"} 0.004
 *     userstatus_x_seconds_count{role="read"} 1
 */
#ifndef US_METRICS_H
#define US_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct us_metric us_metric;

/* Most bucket bounds of one histogram (the +Inf bucket not counted). */
#define US_METRIC_MAX_BUCKETS 32

/* Registers a counter or a gauge. For every registration function: name and help must outlive the
 * registry (string literals), and registration happens before /metrics is served. */
us_metric *us_metric_counter(const char *name, const char *help);
us_metric *us_metric_gauge(const char *name, const char *help);

void us_metric_add(us_metric *m, uint64_t n);
void us_metric_set(us_metric *m, int64_t v);
/* Adds delta (may be negative) to a gauge registered with us_metric_gauge. */
void us_metric_gauge_add(us_metric *m, int64_t delta);
/* Current value of a counter or an integer gauge. */
uint64_t us_metric_value(const us_metric *m);

/* A gauge whose value is read at scrape time: fn(arg), called from the thread serving /metrics
 * while other threads run, so it must only read data that is safe to read concurrently (atomics, or
 * data under the caller's own lock). */
typedef double (*us_metric_read_fn)(void *arg);
us_metric *us_metric_gauge_func(const char *name, const char *help, us_metric_read_fn fn,
                                void *arg);

/* A family of gauges whose samples are written at scrape time: fn(sink, arg) calls
 * us_metric_sink_sample once per sample. family has no labels (`userstatus_worker_consumer_lag`).
 * Same threading rule as us_metric_gauge_func. */
typedef struct us_metric_sink us_metric_sink;
typedef void (*us_metric_collect_fn)(us_metric_sink *sink, void *arg);
us_metric *us_metric_gauge_collector(const char *family, const char *help, us_metric_collect_fn fn,
                                     void *arg);
/* Writes one sample of the collector's family. labels is the text between the braces, already
 * escaped (`partition="3"`), or NULL / "" for none. */
void us_metric_sink_sample(us_metric_sink *sink, const char *labels, double value);

/* Registers a histogram. bounds: nbounds (1..US_METRIC_MAX_BUCKETS) finite upper bounds in strictly
 * increasing order, copied; the +Inf bucket is implicit. Aborts with a message on bad bounds (a
 * programming error, found at start-up). */
us_metric *us_metric_histogram(const char *name, const char *help, const double *bounds,
                               size_t nbounds);

/* Records one observation: an atomic add on its bucket, one on the sum (compare-and-swap loop).
 * The value goes into the first bucket whose bound is >= value (Prometheus' `le`); NaN goes to +Inf
 * only. */
void us_metric_observe(us_metric *m, double value);

/* Observations so far and their sum (tests, logs). */
uint64_t us_metric_histogram_count(const us_metric *m);
double us_metric_histogram_sum(const us_metric *m);

/* Renders every metric; returns a malloc'd NUL-terminated string (caller frees) and its length. */
char *us_metrics_render(size_t *len);

/* Frees the registry (at exit, so that leak checkers stay quiet; tests use it to start over). */
void us_metrics_free_all(void);

#endif
