/* userstatus-notify: delivers status changes from the changes topic to webhooks and Centrifugo
 * channels (changes.webhooks, changes.centrifugo), one consumer group and one thread per
 * destination (notify/notify.h). With no destination configured it says so and exits 0, so that a
 * unit installed everywhere does not restart in a loop where nothing is to be delivered. */
#include "notify.h"

#include "admin_http.h"
#include "cli.h"
#include "clock.h"
#include "kafka.h"
#include "log.h"
#include "signals.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOPIC_CREATE_TIMEOUT_MS 10000
#define TOPIC_RETRY_MS                                                                             \
    1000                  /* Wait between attempts to create the topic while brokers are down.     \
                           */
#define GROUP_HASH_HEX 16 /* Hex digits of SHA-256(url) in a webhook's default group name. */

static const us_cli_flag flags[] = {
    {"brokers", "kafka.brokers", "Kafka bootstrap servers"},
    {"log-level", "log_level", "debug, info, warn or error"},
    {"metrics-port", "changes.notify_metrics_port", "port of /metrics and /health (0: off)"},
};

/* `<notify_consumer_group>-webhook-<first GROUP_HASH_HEX hex digits of SHA-256(url)>`: stable as
 * long as the URL is, and distinct for distinct URLs. */
static void webhook_group(const us_config *cfg, const char *url, char *out, size_t cap)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(url, strlen(url), md, &mdlen, EVP_sha256(), NULL);
    char hex[GROUP_HASH_HEX + 1];
    for (int i = 0; i < GROUP_HASH_HEX / 2; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(out, cap, "%s-webhook-%s", cfg->changes.notify_consumer_group, hex);
}

/* The destinations cfg configures, in *out (malloc'd, *n of them; none: NULL, 0). Two with one
 * consumer group would split the partitions between them: refused. Returns 0, or -1 with err. */
static int plan_destinations(const us_config *cfg, volatile sig_atomic_t *stop, us_dest **out,
                             size_t *n, char *err, size_t errlen)
{
    const us_strlist *w = &cfg->changes.webhooks;
    size_t nw = w->count / US_WEBHOOK_FIELDS,
           total = nw + (cfg->changes.centrifugo_api_url[0] != 0);
    *out = NULL;
    *n = 0;
    if (total == 0) return 0;
    us_dest *d = calloc(total, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory for %zu destinations", total);
        return -1;
    }
    for (size_t i = 0; i < nw; i++) {
        char *const *f = &w->items[i * US_WEBHOOK_FIELDS];
        d[i].kind = US_DEST_WEBHOOK;
        snprintf(d[i].name, sizeof(d[i].name), "webhook%zu", i);
        d[i].url = f[US_WEBHOOK_URL];
        d[i].secret = f[US_WEBHOOK_SECRET];
        if (f[US_WEBHOOK_GROUP][0])
            snprintf(d[i].group, sizeof(d[i].group), "%s", f[US_WEBHOOK_GROUP]);
        else
            webhook_group(cfg, d[i].url, d[i].group, sizeof(d[i].group));
    }
    if (total > nw) {
        us_dest *c = &d[nw];
        const char *api = cfg->changes.centrifugo_api_url;
        size_t len = strlen(api);
        while (len > 0 && api[len - 1] == '/')
            len--;
        c->kind = US_DEST_CENTRIFUGO;
        snprintf(c->name, sizeof(c->name), "centrifugo");
        size_t cap = len + sizeof("/batch");
        if (!(c->url_buf = malloc(cap))) {
            free(d);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        snprintf(c->url_buf, cap, "%.*s/batch", (int)len, api);
        c->url = c->url_buf;
        c->api_key = cfg->changes.centrifugo_api_key;
        c->channel_prefix = cfg->changes.centrifugo_channel_prefix;
        if (cfg->changes.centrifugo_consumer_group[0])
            snprintf(c->group, sizeof(c->group), "%s", cfg->changes.centrifugo_consumer_group);
        else
            snprintf(c->group, sizeof(c->group), "%s-centrifugo",
                     cfg->changes.notify_consumer_group);
    }
    for (size_t i = 0; i < total; i++) {
        d[i].cfg = cfg;
        d[i].stop = stop;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(d[i].group, d[j].group) != 0) continue;
            snprintf(err, errlen,
                     "config key 'changes.webhooks': %s and %s would share the consumer group "
                     "'%s' (the same URL twice?): give each its own 'consumer_group'",
                     d[j].name, d[i].name, d[i].group);
            free(d[total - 1].url_buf);
            free(d);
            return -1;
        }
    }
    *out = d;
    *n = total;
    return 0;
}

/* Creates the changes topic, compacted, when the worker has not yet: a consumer subscribed to a
 * missing topic would only see it at its next metadata refresh (minutes). Retries while the
 * brokers are unreachable. Returns 0, or -1 when stopped first or refused. */
static int ensure_changes_topic(const us_config *cfg)
{
    char err[512];
    rd_kafka_conf_t *conf = us_kafka_conf_new(cfg, err, sizeof(err));
    rd_kafka_t *rk =
        conf ? us_kafka_new(RD_KAFKA_PRODUCER, conf, "admin client", err, sizeof(err)) : NULL;
    if (!rk) {
        us_error("%s", err);
        return -1;
    }
    const char *const configs[][2] = {{"cleanup.policy", "compact"}};
    int rc;
    while ((rc = us_kafka_ensure_topic(rk, cfg, cfg->changes.topic, configs, 1,
                                       TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err))) != 0 &&
           !us_signals_stop_requested()) {
        us_error("%s; retrying in %d ms", err, TOPIC_RETRY_MS);
        us_signals_wait(TOPIC_RETRY_MS);
    }
    rd_kafka_destroy(rk);
    return rc;
}

typedef struct notify_state {
    us_dest *dests;
    size_t n;
} notify_state;

/* /health: 503 when a destination's thread gave up; 200 otherwise, naming destinations whose
 * receiver does not acknowledge (retried: nothing this process could fix by restarting). */
static int health(void *arg, char *msg, size_t msglen)
{
    const notify_state *s = arg;
    size_t len = (size_t)snprintf(msg, msglen, "delivering to %zu destination(s)", s->n);
    int ok = 1;
    for (size_t i = 0; i < s->n && len < msglen; i++) {
        if (atomic_load(&s->dests[i].failed)) {
            ok = 0;
            len += (size_t)snprintf(msg + len, msglen - len, "; %s stopped", s->dests[i].name);
        } else if (atomic_load(&s->dests[i].failing)) {
            len += (size_t)snprintf(msg + len, msglen - len, "; %s retrying", s->dests[i].name);
        }
    }
    return ok;
}

static int run(const us_config *cfg, us_dest *dests, size_t n)
{
    char err[512];
    notify_state state = {dests, n};
    us_admin_http *admin = NULL;
    int rc = 1;
    size_t started = 0;
    us_dest_register_metrics(dests, n);
    if (cfg->changes.notify_metrics_port > 0) {
        admin =
            us_admin_http_start(cfg->changes.notify_metrics_address,
                                cfg->changes.notify_metrics_port, health, &state, err, sizeof(err));
        if (!admin) {
            us_error("%s", err);
            goto out;
        }
    }
    if (ensure_changes_topic(cfg) != 0) {
        rc = us_signals_stop_requested() ? 0 : 1;
        goto out;
    }
    for (; started < n; started++) {
        if (us_dest_start(&dests[started], err, sizeof(err)) != 0) {
            us_error("%s", err);
            goto out;
        }
    }
    us_info("delivering changes of '%s' to %zu destination(s); metrics on %s:%d",
            cfg->changes.topic, n, cfg->changes.notify_metrics_address,
            cfg->changes.notify_metrics_port);
    while (!us_signals_stop_requested())
        us_signals_wait(-1);
    us_info("shutting down");
    rc = 0;
out:
    if (rc != 0) *us_signals_stop_flag() = 1; /* Started threads stop too. */
    int left_running = 0;
    for (size_t i = 0; i < n; i++)
        if (us_dest_join(&dests[i]) != 0) left_running = 1;
    us_admin_http_stop(admin);
    if (left_running) {
        /* librdkafka threads of a consumer that could not leave its group still run: no exit
         * handlers beside them. Nothing of ours is pending (unacknowledged changes are delivered
         * again after the restart). */
        fflush(NULL);
        _exit(rc);
    }
    us_metrics_free_all();
    return rc;
}

int main(int argc, char **argv, char **envp)
{
    us_log_set_tag("notify");
    us_config cfg;
    int check_only;
    int rc = us_cli_load(argc, argv, envp, "userstatus-notify", flags,
                         sizeof(flags) / sizeof(flags[0]), &cfg, &check_only);
    if (rc != 0) {
        us_config_free(&cfg);
        return rc == 2 ? 0 : 1;
    }
    us_dest *dests = NULL;
    size_t n = 0;
    char err[512];
    if (plan_destinations(&cfg, us_signals_stop_flag(), &dests, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "userstatus-notify: %s\n", err);
        us_config_free(&cfg);
        return 1;
    }
    if (check_only) {
        printf("configuration is valid\n");
    } else if (n == 0) {
        us_info("no destination configured (changes.webhooks, changes.centrifugo.api_url): "
                "nothing to deliver; exiting");
    } else {
        if (!cfg.changes.enabled)
            us_warn("changes.enabled is false: the worker publishes no changes, so there will "
                    "be nothing to deliver");
        if (us_signals_init() != 0) {
            us_error("installing signal handlers: %s", strerror(errno));
            rc = 1;
        } else if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            us_error("initialising libcurl failed");
            rc = 1;
        } else {
            rc = run(&cfg, dests, n);
            curl_global_cleanup();
        }
    }
    for (size_t i = 0; i < n; i++)
        free(dests[i].url_buf);
    free(dests);
    us_config_free(&cfg);
    return rc;
}
