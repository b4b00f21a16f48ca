/* Implementation of the metrics registry: counters, gauges and histograms in the Prometheus text
 * format. */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_FUNC,
    KIND_COLLECTOR,
    KIND_HISTOGRAM
} metric_kind;

static const char *const kind_type[] = {
    [KIND_COUNTER] = "counter", [KIND_GAUGE] = "gauge",         [KIND_GAUGE_FUNC] = "gauge",
    [KIND_COLLECTOR] = "gauge", [KIND_HISTOGRAM] = "histogram",
};

struct us_metric {
    const char *name;
    const char *help;
    metric_kind kind;
    _Atomic int64_t value; /* counter, gauge */
    /* gauge_func, collector */
    us_metric_read_fn read;
    us_metric_collect_fn collect;
    void *arg;
    /* histogram: buckets[i] counts observations in (bounds[i-1], bounds[i]]; buckets[nbounds] the
     * ones above the last bound (and NaN). Not cumulative: render adds them up. */
    double *bounds;
    size_t nbounds;
    _Atomic uint64_t *buckets;
    _Atomic uint64_t sum_bits; /* the double sum, as its bit pattern, updated by compare-and-swap */
    us_metric *next;
};

static us_metric *head, *tail;

static us_metric *metric_new(const char *name, const char *help, metric_kind kind)
{
    us_metric *m = calloc(1, sizeof(*m));
    if (!m) abort();
    m->name = name;
    m->help = help;
    m->kind = kind;
    atomic_init(&m->value, 0);
    atomic_init(&m->sum_bits, 0);
    if (tail)
        tail->next = m;
    else
        head = m;
    tail = m;
    return m;
}

us_metric *us_metric_counter(const char *name, const char *help)
{
    return metric_new(name, help, KIND_COUNTER);
}

us_metric *us_metric_gauge(const char *name, const char *help)
{
    return metric_new(name, help, KIND_GAUGE);
}

void us_metric_add(us_metric *m, uint64_t n)
{
    atomic_fetch_add_explicit(&m->value, (int64_t)n, memory_order_relaxed);
}

void us_metric_set(us_metric *m, int64_t v)
{
    atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

void us_metric_gauge_add(us_metric *m, int64_t delta)
{
    atomic_fetch_add_explicit(&m->value, delta, memory_order_relaxed);
}

uint64_t us_metric_value(const us_metric *m)
{
    return (uint64_t)atomic_load_explicit(&((us_metric *)m)->value, memory_order_relaxed);
}

us_metric *us_metric_gauge_func(const char *name, const char *help, us_metric_read_fn fn, void *arg)
{
    us_metric *m = metric_new(name, help, KIND_GAUGE_FUNC);
    m->read = fn;
    m->arg = arg;
    return m;
}

us_metric *us_metric_gauge_collector(const char *family, const char *help, us_metric_collect_fn fn,
                                     void *arg)
{
    if (strchr(family, '{')) {
        fprintf(stderr, "metrics: collector family '%s' must not carry labels\n", family);
        abort();
    }
    us_metric *m = metric_new(family, help, KIND_COLLECTOR);
    m->collect = fn;
    m->arg = arg;
    return m;
}

/* ---------------------------------------------------------------------------------------------
 * Histograms
 *
 * One relaxed atomic increment of the bucket the value falls in, and a compare-and-swap loop adding
 * the value to the sum (a double kept as its bit pattern in a 64-bit atomic). The count is not
 * stored: render derives it from the buckets, so `_count` equals the `+Inf` bucket in every scrape.
 */

us_metric *us_metric_histogram(const char *name, const char *help, const double *bounds,
                               size_t nbounds)
{
    if (nbounds < 1 || nbounds > US_METRIC_MAX_BUCKETS) {
        fprintf(stderr, "metrics: histogram '%s' has %zu bounds, needs 1..%d\n", name, nbounds,
                US_METRIC_MAX_BUCKETS);
        abort();
    }
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
            fprintf(stderr,
                    "metrics: histogram '%s': bound %zu (%g) is not finite and above the one "
                    "before\n",
                    name, i, bounds[i]);
            abort();
        }
    }
    us_metric *m = metric_new(name, help, KIND_HISTOGRAM);
    m->bounds = malloc(nbounds * sizeof(*m->bounds));
    m->buckets = malloc((nbounds + 1) * sizeof(*m->buckets));
    if (!m->bounds || !m->buckets) abort();
    memcpy(m->bounds, bounds, nbounds * sizeof(*bounds));
    m->nbounds = nbounds;
    for (size_t i = 0; i <= nbounds; i++)
        atomic_init(&m->buckets[i], 0);
    return m;
}

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

void us_metric_observe(us_metric *m, double value)
{
    /* First bound >= value; NaN compares false everywhere and lands in +Inf. */
    size_t lo = 0, hi = m->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (value <= m->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&m->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&m->sum_bits, &old,
                                                  double_bits(bits_double(old) + value),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

uint64_t us_metric_histogram_count(const us_metric *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i <= m->nbounds; i++)
        n += atomic_load_explicit(&((us_metric *)m)->buckets[i], memory_order_relaxed);
    return n;
}

double us_metric_histogram_sum(const us_metric *m)
{
    return bits_double(atomic_load_explicit(&((us_metric *)m)->sum_bits, memory_order_relaxed));
}

/* ---------------------------------------------------------------------------------------------
 * Rendering */

typedef struct {
    char *data;
    size_t len, cap;
} text_buf;

struct us_metric_sink {
    text_buf *out;
    const char *family;
};

static void buf_printf(text_buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (k < 0) abort();
        if ((size_t)k < b->cap - b->len) {
            b->len += (size_t)k;
            return;
        }
        while ((size_t)k >= b->cap - b->len)
            b->cap *= 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data) abort();
    }
}

/* Largest magnitude printed as a plain integer: every integer up to it is exact in a double. */
#define EXACT_INTEGER_MAX 9007199254740992.0 /* 2^53 */

/* v as text: whole numbers up to 2^53 as integers ("500000", not "5e+05"), others in the shortest
 * %g form that reads back as the same double ("0.004", "1e-06"). */
static const char *format_double(char *buf, size_t n, double v)
{
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == floor(v) && fabs(v) <= EXACT_INTEGER_MAX) {
        snprintf(buf, n, "%.0f", v);
        return buf;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

static size_t family_len(const char *name)
{
    const char *brace = strchr(name, '{');
    return brace ? (size_t)(brace - name) : strlen(name);
}

/* The labels of a registered name, without braces ("" for none), as a length into name. */
static const char *name_labels(const char *name, size_t *len)
{
    const char *brace = strchr(name, '{');
    if (!brace) {
        *len = 0;
        return "";
    }
    const char *end = strrchr(brace, '}');
    *len = end ? (size_t)(end - brace - 1) : strlen(brace + 1);
    return brace + 1;
}

static void render_histogram(text_buf *b, const us_metric *m)
{
    size_t flen = family_len(m->name), llen;
    const char *labels = name_labels(m->name, &llen);
    const char *sep = llen ? "," : "";
    char num[40];
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= m->nbounds; i++) {
        cumulative += atomic_load_explicit(&((us_metric *)m)->buckets[i], memory_order_relaxed);
        const char *le = i < m->nbounds ? format_double(num, sizeof(num), m->bounds[i]) : "+Inf";
        buf_printf(b, "%.*s_bucket{%.*s%sle=\"%s\"} %llu\n", (int)flen, m->name, (int)llen, labels,
                   sep, le, (unsigned long long)cumulative);
    }
    const char *open = llen ? "{" : "", *close = llen ? "}" : "";
    buf_printf(b, "%.*s_sum%s%.*s%s %s\n", (int)flen, m->name, open, (int)llen, labels, close,
               format_double(num, sizeof(num), us_metric_histogram_sum(m)));
    buf_printf(b, "%.*s_count%s%.*s%s %llu\n", (int)flen, m->name, open, (int)llen, labels, close,
               (unsigned long long)cumulative);
}

void us_metric_sink_sample(us_metric_sink *sink, const char *labels, double value)
{
    char num[40];
    if (labels && *labels)
        buf_printf(sink->out, "%s{%s} %s\n", sink->family, labels,
                   format_double(num, sizeof(num), value));
    else
        buf_printf(sink->out, "%s %s\n", sink->family, format_double(num, sizeof(num), value));
}

char *us_metrics_render(size_t *len)
{
    text_buf b = {malloc(4096), 0, 4096};
    if (!b.data) abort();
    b.data[0] = '\0';
    const char *prev = NULL;
    size_t prev_len = 0;
    char num[40];
    for (us_metric *m = head; m; m = m->next) {
        size_t flen = family_len(m->name);
        if (!prev || prev_len != flen || strncmp(prev, m->name, flen) != 0)
            buf_printf(&b, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)flen, m->name, m->help,
                       (int)flen, m->name, kind_type[m->kind]);
        switch (m->kind) {
        case KIND_COUNTER:
        case KIND_GAUGE:
            buf_printf(&b, "%s %lld\n", m->name,
                       (long long)atomic_load_explicit(&m->value, memory_order_relaxed));
            break;
        case KIND_GAUGE_FUNC:
            buf_printf(&b, "%s %s\n", m->name, format_double(num, sizeof(num), m->read(m->arg)));
            break;
        case KIND_COLLECTOR: {
            us_metric_sink sink = {&b, m->name};
            m->collect(&sink, m->arg);
            break;
        }
        case KIND_HISTOGRAM:
            render_histogram(&b, m);
            break;
        }
        prev = m->name;
        prev_len = flen;
    }
    *len = b.len;
    return b.data;
}

void us_metrics_free_all(void)
{
    us_metric *m = head;
    while (m) {
        us_metric *next = m->next;
        free(m->bounds);
        free((void *)m->buckets);
        free(m);
        m = next;
    }
    head = tail = NULL;
}
