/* Implementation of the metrics registry. */
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct us_metric {
    const char *name;
    const char *help;
    const char *type;
    _Atomic int64_t value;
    us_metric *next;
};

static us_metric *head, *tail;

static us_metric *metric_new(const char *name, const char *help, const char *type)
{
    us_metric *m = calloc(1, sizeof(*m));
    if (!m) abort();
    m->name = name;
    m->help = help;
    m->type = type;
    if (tail)
        tail->next = m;
    else
        head = m;
    tail = m;
    return m;
}

us_metric *us_metric_counter(const char *name, const char *help)
{
    return metric_new(name, help, "counter");
}

us_metric *us_metric_gauge(const char *name, const char *help)
{
    return metric_new(name, help, "gauge");
}

void us_metric_add(us_metric *m, uint64_t n)
{
    atomic_fetch_add_explicit(&m->value, (int64_t)n, memory_order_relaxed);
}

void us_metric_set(us_metric *m, int64_t v)
{
    atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

uint64_t us_metric_value(const us_metric *m)
{
    return (uint64_t)atomic_load_explicit(&((us_metric *)m)->value, memory_order_relaxed);
}

static size_t family_len(const char *name)
{
    const char *brace = strchr(name, '{');
    return brace ? (size_t)(brace - name) : strlen(name);
}

char *us_metrics_render(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *out = malloc(cap);
    if (!out) abort();
    const char *prev = NULL;
    size_t prev_len = 0;
    for (us_metric *m = head; m; m = m->next) {
        size_t flen = family_len(m->name);
        char line[1024];
        int k = 0;
        if (!prev || prev_len != flen || strncmp(prev, m->name, flen) != 0)
            k = snprintf(line, sizeof(line), "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)flen,
                         m->name, m->help, (int)flen, m->name, m->type);
        k += snprintf(line + k, sizeof(line) - (size_t)k, "%s %lld\n", m->name,
                      (long long)atomic_load_explicit(&m->value, memory_order_relaxed));
        if (n + (size_t)k + 1 > cap) {
            while (n + (size_t)k + 1 > cap) cap *= 2;
            out = realloc(out, cap);
            if (!out) abort();
        }
        memcpy(out + n, line, (size_t)k);
        n += (size_t)k;
        prev = m->name;
        prev_len = flen;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

void us_metrics_free_all(void)
{
    us_metric *m = head;
    while (m) {
        us_metric *next = m->next;
        free(m);
        m = next;
    }
    head = tail = NULL;
}
