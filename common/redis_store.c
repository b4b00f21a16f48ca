/* Implementation of the Redis user status store: a topology, an executor and a status model put
 * together behind the interface of redis_store.h. */
#include "redis_store.h"

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "redis_pipeline.h"
#include "redis_topology.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REFUSED_LOG_INTERVAL_NS 10000000000LL /* Log refused reads at most every 10 s. */

struct us_redis {
    us_topology topo;
    us_pipeline pipe;
    const us_status_model_ops *ops;
    us_status_model *model;
    int wait_replicas; /* WAIT for this many replicas after writes (0: don't). */
    int64_t wait_timeout_ms;
    uint8_t *refused; /* Scratch for callers that pass no refused array. */
    size_t refused_cap;
};

static const us_status_model_ops *const models[] = {&us_status_buckets, &us_status_per_user};

/* Upper bounds of the round-trip buckets. Seconds. */
static const double ROUNDTRIP_BOUNDS[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
static us_metric *m_write_rt, *m_read_rt, *m_refused_reads;
static _Atomic int64_t refused_logged_ns; /* When a refused read was last logged. */

void us_redis_metrics_register(void)
{
    us_pipeline_metrics_register();
    us_status_buckets_metrics_register();
    const size_t nb = sizeof(ROUNDTRIP_BOUNDS) / sizeof(ROUNDTRIP_BOUNDS[0]);
    const char *help = "One pipelined store operation: formatting, one round trip per Redis node "
                       "involved (more after redirects), reply parsing; role write (worker) or "
                       "read (query).";
    m_write_rt = us_metric_histogram("userstatus_redis_roundtrip_seconds{role=\"write\"}", help,
                                     ROUNDTRIP_BOUNDS, nb);
    m_read_rt = us_metric_histogram("userstatus_redis_roundtrip_seconds{role=\"read\"}", help,
                                    ROUNDTRIP_BOUNDS, nb);
    m_refused_reads = us_metric_counter("userstatus_redis_refused_reads_total",
                                        "Users read as absent because Redis refused their keys "
                                        "(e.g. WRONGTYPE: something else wrote a key of ours).");
}

/* Observes the time since t0_ns into m (NULL before registration: tests, benches). */
static void observe_since(us_metric *m, int64_t t0_ns)
{
    if (m) us_metric_observe(m, (double)(us_monotonic_ns() - t0_ns) / 1e9);
}

us_redis *us_redis_new(const us_config *cfg, char *err, size_t errlen)
{
    us_redis *r = calloc(1, sizeof(*r));
    if (!r) abort();
    r->wait_replicas = cfg->user_status.redis_wait_replicas;
    r->wait_timeout_ms = cfg->user_status.redis_wait_timeout_ms;
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        if (strcmp(models[i]->name, cfg->user_status.storage) == 0) r->ops = models[i];
    if (!r->ops) {
        snprintf(err, errlen, "config key 'user_status.storage': '%s' is not buckets or per_user",
                 cfg->user_status.storage);
        goto fail;
    }
    if (us_topology_init(&r->topo, cfg, err, errlen) != 0) goto fail;
    r->pipe.topo = &r->topo;
    if (!(r->model = r->ops->create(cfg, r->topo.nshards, err, errlen))) goto fail;
    return r;
fail:
    us_redis_free(r);
    return NULL;
}

void us_redis_free(us_redis *r)
{
    if (!r) return;
    if (r->model) r->ops->destroy(r->model);
    us_pipeline_release(&r->pipe);
    us_topology_release(&r->topo);
    free(r->refused);
    free(r);
}

int us_redis_apply(us_redis *r, const us_user_update *updates, size_t n, uint8_t *refused,
                   char *err, size_t errlen)
{
    uint8_t *flags = refused;
    if (!flags) {
        if (n > r->refused_cap) {
            free(r->refused);
            r->refused = malloc(n);
            if (!r->refused) abort();
            r->refused_cap = n;
        }
        flags = r->refused;
    }
    int64_t t0 = us_monotonic_ns();
    int nrefused = r->ops->apply(r->model, &r->pipe, updates, n, flags, err, errlen);
    observe_since(m_write_rt, t0);
    if (nrefused < 0 || (nrefused > 0 && !refused)) return -1;
    if (r->wait_replicas > 0 && n > 0 &&
        us_pipeline_wait_replicas(&r->pipe, r->wait_replicas, r->wait_timeout_ms, err, errlen) != 0)
        return -1;
    return nrefused;
}

void us_redis_set_await(us_redis *r, us_pipe_await_fn fn, void *arg)
{
    r->pipe.await = fn;
    r->pipe.await_arg = arg;
}

int us_redis_get(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                 size_t errlen)
{
    int64_t t0 = us_monotonic_ns();
    int rc = r->ops->get(r->model, &r->pipe, users, n, out, err, errlen);
    observe_since(m_read_rt, t0);
    if (rc < 0) {
        /* A pooled connection may have been closed by the server while idle, or the topology
         * changed: retry once on fresh connections (reads are idempotent). */
        us_debug("retrying read after: %s", err);
        rc = r->ops->get(r->model, &r->pipe, users, n, out, err, errlen);
    }
    if (rc <= 0) return rc;
    /* Keys of ours that Redis refuses: their users read as absent, as the worker (which sends
     * their events to the dead-letter topic) never stored them; the operator is told, at most
     * every REFUSED_LOG_INTERVAL_NS. */
    if (m_refused_reads) us_metric_add(m_refused_reads, rc);
    int64_t now = us_monotonic_ns(), last = atomic_load(&refused_logged_ns);
    if ((last == 0 || now - last >= REFUSED_LOG_INTERVAL_NS) &&
        atomic_compare_exchange_strong(&refused_logged_ns, &last, now))
        us_warn("read %d user(s) as absent: Redis refused their keys: %s", rc, err);
    return 0;
}

int us_redis_ping(us_redis *r, char *err, size_t errlen)
{
    us_topology *t = &r->topo;
    if (us_topology_prepare(t, err, errlen) != 0) return -1;
    for (size_t i = 0; i < t->nnodes; i++) {
        if (t->kind == US_TOPO_CLUSTER) { /* Only the masters the map routes to. */
            int used = 0;
            for (size_t s = 0; s < US_CLUSTER_SLOTS && !used; s++) used = t->slot_node[s] == i;
            if (!used) continue;
        }
        if (us_topology_connect(t, (uint16_t)i, err, errlen) != 0) return -1;
        us_redis_node *n = &t->nodes[i];
        const char *argv[1] = {"PING"};
        redisReply *reply = us_redis_command(n->c, &n->addr, 1, argv, err, errlen);
        if (!reply) {
            us_topology_node_failed(t, (uint16_t)i);
            return -1;
        }
        freeReplyObject(reply);
    }
    return 0;
}

void us_redis_interrupt(us_redis *r)
{
    us_topology_interrupt(&r->topo);
}
