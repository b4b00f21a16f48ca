/* Metrics registry tests: the exact Prometheus exposition text of counters, gauges (set, add,
 * read at scrape time, collected per label) and histograms, and histograms under concurrent
 * observation. Each test starts from an empty registry. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OBSERVER_THREADS 4
#define OBSERVATIONS_PER_THREAD 100000

static int reset(void **state)
{
    (void)state;
    us_metrics_free_all();
    return 0;
}

/* Renders the registry and compares it with want, showing both on a difference. */
static void assert_rendered(const char *want)
{
    size_t len;
    char *got = us_metrics_render(&len);
    assert_int_equal(len, strlen(got));
    if (strcmp(got, want) != 0) print_error("rendered:\n%s\nwanted:\n%s\n", got, want);
    assert_string_equal(got, want);
    free(got);
}

static void test_empty_registry_renders_nothing(void **state)
{
    (void)state;
    assert_rendered("");
}

static void test_labelled_counters_share_help_and_type(void **state)
{
    (void)state;
    us_metric *a = us_metric_counter("userstatus_t_events_total{result=\"applied\"}", "Events.");
    us_metric *d =
        us_metric_counter("userstatus_t_events_total{result=\"dead_lettered\"}", "Events.");
    us_metric *b = us_metric_counter("userstatus_t_batches_total", "Batches.");
    us_metric_add(a, 5);
    us_metric_add(a, 2);
    us_metric_add(d, 1);
    us_metric_add(b, 3);
    assert_int_equal(us_metric_value(a), 7);
    assert_rendered("# HELP userstatus_t_events_total Events.\n"
                    "# TYPE userstatus_t_events_total counter\n"
                    "userstatus_t_events_total{result=\"applied\"} 7\n"
                    "userstatus_t_events_total{result=\"dead_lettered\"} 1\n"
                    "# HELP userstatus_t_batches_total Batches.\n"
                    "# TYPE userstatus_t_batches_total counter\n"
                    "userstatus_t_batches_total 3\n");
}

static void test_gauge_set_and_add_go_both_ways(void **state)
{
    (void)state;
    us_metric *g = us_metric_gauge("userstatus_t_inflight", "In flight.");
    us_metric_set(g, 10);
    us_metric_gauge_add(g, 5);
    us_metric_gauge_add(g, -17);
    assert_rendered("# HELP userstatus_t_inflight In flight.\n"
                    "# TYPE userstatus_t_inflight gauge\n"
                    "userstatus_t_inflight -2\n");
}

static double read_half(void *arg)
{
    return *(const int *)arg / 2.0;
}

static void test_gauge_func_is_read_at_scrape_time(void **state)
{
    (void)state;
    int source = 3;
    us_metric_gauge_func("userstatus_t_ratio{kind=\"x\"}", "Ratio.", read_half, &source);
    assert_rendered("# HELP userstatus_t_ratio Ratio.\n"
                    "# TYPE userstatus_t_ratio gauge\n"
                    "userstatus_t_ratio{kind=\"x\"} 1.5\n");
    source = 8;
    assert_rendered("# HELP userstatus_t_ratio Ratio.\n"
                    "# TYPE userstatus_t_ratio gauge\n"
                    "userstatus_t_ratio{kind=\"x\"} 4\n");
}

typedef struct {
    int npartitions;
    int64_t lag[3];
} lag_source;

static void collect_lag(us_metric_sink *sink, void *arg)
{
    const lag_source *s = arg;
    for (int p = 0; p < s->npartitions; p++) {
        char labels[32];
        snprintf(labels, sizeof(labels), "partition=\"%d\"", p);
        us_metric_sink_sample(sink, labels, (double)s->lag[p]);
    }
}

static void test_collector_writes_one_sample_per_label_set(void **state)
{
    (void)state;
    lag_source s = {2, {0, 12345678901, 0}};
    us_metric_gauge_collector("userstatus_t_lag", "Lag.", collect_lag, &s);
    assert_rendered("# HELP userstatus_t_lag Lag.\n"
                    "# TYPE userstatus_t_lag gauge\n"
                    "userstatus_t_lag{partition=\"0\"} 0\n"
                    "userstatus_t_lag{partition=\"1\"} 12345678901\n");
    s.npartitions = 0; /* all partitions revoked: the family keeps only its HELP and TYPE */
    assert_rendered("# HELP userstatus_t_lag Lag.\n"
                    "# TYPE userstatus_t_lag gauge\n");
}

static const double seconds_bounds[] = {0.0005, 0.001, 0.0025, 0.1, 1, 2.5};

static void test_histogram_buckets_are_cumulative_with_le_inclusive(void **state)
{
    (void)state;
    us_metric *h =
        us_metric_histogram("userstatus_t_duration_seconds", "Duration.", seconds_bounds, 6);
    us_metric_observe(h, 0.0002); /* le 0.0005 */
    us_metric_observe(h, 0.001);  /* exactly a bound: le 0.001 */
    us_metric_observe(h, 0.05);   /* le 0.1 */
    us_metric_observe(h, 0.05);   /* le 0.1 */
    us_metric_observe(h, 2.5);    /* exactly the last bound */
    us_metric_observe(h, 30);     /* above every bound: +Inf only */
    assert_int_equal(us_metric_histogram_count(h), 6);
    assert_rendered("# HELP userstatus_t_duration_seconds Duration.\n"
                    "# TYPE userstatus_t_duration_seconds histogram\n"
                    "userstatus_t_duration_seconds_bucket{le=\"0.0005\"} 1\n"
                    "userstatus_t_duration_seconds_bucket{le=\"0.001\"} 2\n"
                    "userstatus_t_duration_seconds_bucket{le=\"0.0025\"} 2\n"
                    "userstatus_t_duration_seconds_bucket{le=\"0.1\"} 4\n"
                    "userstatus_t_duration_seconds_bucket{le=\"1\"} 4\n"
                    "userstatus_t_duration_seconds_bucket{le=\"2.5\"} 5\n"
                    "userstatus_t_duration_seconds_bucket{le=\"+Inf\"} 6\n"
                    "userstatus_t_duration_seconds_sum 32.6012\n"
                    "userstatus_t_duration_seconds_count 6\n");
}

static void test_empty_histogram_renders_zeros(void **state)
{
    (void)state;
    static const double bounds[] = {1};
    us_metric_histogram("userstatus_t_age_seconds", "Age.", bounds, 1);
    assert_rendered("# HELP userstatus_t_age_seconds Age.\n"
                    "# TYPE userstatus_t_age_seconds histogram\n"
                    "userstatus_t_age_seconds_bucket{le=\"1\"} 0\n"
                    "userstatus_t_age_seconds_bucket{le=\"+Inf\"} 0\n"
                    "userstatus_t_age_seconds_sum 0\n"
                    "userstatus_t_age_seconds_count 0\n");
}

static void test_labelled_histograms_put_their_labels_before_le(void **state)
{
    (void)state;
    static const double bounds[] = {0.01, 0.1};
    us_metric *get = us_metric_histogram(
        "userstatus_t_request_seconds{method=\"get_user_status\",transport=\"http\"}", "Requests.",
        bounds, 2);
    us_metric *upd = us_metric_histogram(
        "userstatus_t_request_seconds{method=\"update_user_status\",transport=\"grpc\"}",
        "Requests.", bounds, 2);
    us_metric_observe(get, 0.004);
    us_metric_observe(upd, 0.25);
    assert_rendered(
        "# HELP userstatus_t_request_seconds Requests.\n"
        "# TYPE userstatus_t_request_seconds histogram\n"
        "userstatus_t_request_seconds_bucket{method=\"get_user_status\",transport=\"http\",le=\"0."
        "01\"} 1\n"
        "userstatus_t_request_seconds_bucket{method=\"get_user_status\",transport=\"http\",le=\"0."
        "1\"} 1\n"
        "userstatus_t_request_seconds_bucket{method=\"get_user_status\",transport=\"http\",le=\"+"
        "Inf\"} 1\n"
        "userstatus_t_request_seconds_sum{method=\"get_user_status\",transport=\"http\"} 0.004\n"
        "userstatus_t_request_seconds_count{method=\"get_user_status\",transport=\"http\"} 1\n"
        "userstatus_t_request_seconds_bucket{method=\"update_user_status\",transport=\"grpc\",le="
        "\"0.01\"} 0\n"
        "userstatus_t_request_seconds_bucket{method=\"update_user_status\",transport=\"grpc\",le="
        "\"0.1\"} 0\n"
        "userstatus_t_request_seconds_bucket{method=\"update_user_status\",transport=\"grpc\",le="
        "\"+Inf\"} 1\n"
        "userstatus_t_request_seconds_sum{method=\"update_user_status\",transport=\"grpc\"} 0.25\n"
        "userstatus_t_request_seconds_count{method=\"update_user_status\",transport=\"grpc\"} 1\n");
}

static void test_nan_observation_counts_only_in_inf(void **state)
{
    (void)state;
    static const double bounds[] = {1};
    us_metric *h = us_metric_histogram("userstatus_t_odd_seconds", "Odd.", bounds, 1);
    us_metric_observe(h, NAN);
    assert_rendered("# HELP userstatus_t_odd_seconds Odd.\n"
                    "# TYPE userstatus_t_odd_seconds histogram\n"
                    "userstatus_t_odd_seconds_bucket{le=\"1\"} 0\n"
                    "userstatus_t_odd_seconds_bucket{le=\"+Inf\"} 1\n"
                    "userstatus_t_odd_seconds_sum NaN\n"
                    "userstatus_t_odd_seconds_count 1\n");
}

static void *observe_many(void *arg)
{
    us_metric *h = arg;
    for (int i = 0; i < OBSERVATIONS_PER_THREAD; i++)
        us_metric_observe(h, i % 2 ? 0.5 : 2.0);
    return NULL;
}

static void test_concurrent_observations_are_all_counted(void **state)
{
    (void)state;
    static const double bounds[] = {1};
    us_metric *h = us_metric_histogram("userstatus_t_concurrent_seconds", "Concurrent.", bounds, 1);
    pthread_t t[OBSERVER_THREADS];
    for (int i = 0; i < OBSERVER_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, observe_many, h), 0);
    for (int i = 0; i < OBSERVER_THREADS; i++)
        pthread_join(t[i], NULL);
    /* Halves and twos: every partial sum is exact in a double, so the total must be exact too. */
    uint64_t n = (uint64_t)OBSERVER_THREADS * OBSERVATIONS_PER_THREAD;
    assert_int_equal(us_metric_histogram_count(h), n);
    assert_true(us_metric_histogram_sum(h) == (double)n * 1.25);
    char want[1024];
    snprintf(want, sizeof(want),
             "# HELP userstatus_t_concurrent_seconds Concurrent.\n"
             "# TYPE userstatus_t_concurrent_seconds histogram\n"
             "userstatus_t_concurrent_seconds_bucket{le=\"1\"} %llu\n"
             "userstatus_t_concurrent_seconds_bucket{le=\"+Inf\"} %llu\n"
             "userstatus_t_concurrent_seconds_sum %llu\n"
             "userstatus_t_concurrent_seconds_count %llu\n",
             (unsigned long long)n / 2, (unsigned long long)n, (unsigned long long)(n + n / 4),
             (unsigned long long)n);
    assert_rendered(want);
}

static void test_large_registry_grows_the_buffer(void **state)
{
    (void)state;
    static const double bounds[] = {0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064,  0.128,
                                    0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384, 32.768};
    static char names[64][96];
    for (int i = 0; i < 64; i++) {
        snprintf(names[i], sizeof(names[i]), "userstatus_t_many_seconds{shard=\"%d\"}", i);
        us_metric_observe(us_metric_histogram(names[i], "Many.", bounds, 16), 0.003);
    }
    size_t len;
    char *text = us_metrics_render(&len);
    assert_int_equal(len, strlen(text));
    assert_non_null(strstr(text, "userstatus_t_many_seconds_bucket{shard=\"63\",le=\"32.768\"} 1\n"
                                 "userstatus_t_many_seconds_bucket{shard=\"63\",le=\"+Inf\"} 1\n"
                                 "userstatus_t_many_seconds_sum{shard=\"63\"} 0.003\n"
                                 "userstatus_t_many_seconds_count{shard=\"63\"} 1\n"));
    assert_ptr_equal(strstr(text, "# HELP"), text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_empty_registry_renders_nothing, reset),
        cmocka_unit_test_setup(test_labelled_counters_share_help_and_type, reset),
        cmocka_unit_test_setup(test_gauge_set_and_add_go_both_ways, reset),
        cmocka_unit_test_setup(test_gauge_func_is_read_at_scrape_time, reset),
        cmocka_unit_test_setup(test_collector_writes_one_sample_per_label_set, reset),
        cmocka_unit_test_setup(test_histogram_buckets_are_cumulative_with_le_inclusive, reset),
        cmocka_unit_test_setup(test_empty_histogram_renders_zeros, reset),
        cmocka_unit_test_setup(test_labelled_histograms_put_their_labels_before_le, reset),
        cmocka_unit_test_setup(test_nan_observation_counts_only_in_inf, reset),
        cmocka_unit_test_setup(test_concurrent_observations_are_all_counted, reset),
        cmocka_unit_test_setup(test_large_registry_grows_the_buffer, reset),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    us_metrics_free_all();
    return failed;
}
