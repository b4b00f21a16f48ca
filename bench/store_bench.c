/* Store benchmark: writes and reads user statuses through us_redis_apply and us_redis_get -- the
 * exact commands the worker and the query service send -- and prints one JSON line with the rates.
 * bench/memory.py runs it against a redis-server of its own for each storage model and adds the
 * memory figures.
 *
 *   us-store-bench ADDR STORAGE USERS EXPECTED_USERS [READS] [PREFIX]
 *
 * Users are "<1000000 + i>" (decimal ids, as most applications' user ids are), each written once
 * with an active and an online time, in batches of WRITE_BATCH like a worker's coalesced batch;
 * then every user is updated once more (an online heartbeat of a known user: the steady state),
 * then READS random users are read in requests of READ_BATCH, like a buddy list.
 *
 * Besides wall-clock rates, which a busy machine distorts, it reports the CPU time per user of
 * this client (getrusage) and of Redis (INFO cpu) for each phase: with client and server on
 * their own cores, a pipelined rate is bounded by the larger of the two. */
#include "config.h"
#include "redis_store.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define WRITE_BATCH 10000 /* Users per us_redis_apply: the worker's default batch. */
#define READ_BATCH 100    /* Users per us_redis_get: a buddy list. */
#define ID_BASE 1000000   /* First user id. */
#define ID_MAX 24         /* Bytes of an id. */

/* CPU seconds used so far by this process. */
static double client_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds Redis' main thread has used (INFO cpu), through its own connection. */
static double redis_cpu_s(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double v = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *u = strstr(r->str, "used_cpu_user_main_thread:");
        const char *s = strstr(r->str, "used_cpu_sys_main_thread:");
        if (u && s) v = atof(u + 26) + atof(s + 25);
    }
    if (r) freeReplyObject(r);
    return v;
}

typedef struct phase {
    double wall, client, redis;
} phase;

static void phase_start(phase *p, redisContext *c)
{
    p->redis = redis_cpu_s(c);
    p->client = client_cpu_s();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    p->wall = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void phase_end(phase *p, redisContext *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    p->wall = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - p->wall;
    p->client = client_cpu_s() - p->client;
    p->redis = redis_cpu_s(c) - p->redis;
}

/* Writes every user once with the given times, in worker-sized batches. */
static int write_all(us_redis *r, char (*ids)[24], size_t users, us_user_update *ups,
                     uint8_t *refused, int64_t active, int64_t online, char *err, size_t errlen)
{
    for (size_t first = 0; first < users; first += WRITE_BATCH) {
        size_t n = users - first < WRITE_BATCH ? users - first : WRITE_BATCH;
        for (size_t k = 0; k < n; k++) {
            us_user_update *u = &ups[k];
            u->user = ids[first + k];
            u->user_len = strlen(u->user);
            u->active = active == US_TIME_NONE ? US_TIME_NONE : active - (int64_t)(k % 600);
            u->online = online;
        }
        if (us_redis_apply(r, ups, n, refused, err, errlen) != 0) return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s ADDR STORAGE USERS EXPECTED_USERS [READS] [PREFIX]\n", argv[0]);
        return 2;
    }
    size_t users = strtoull(argv[3], NULL, 10);
    size_t reads = argc > 5 ? strtoull(argv[5], NULL, 10) : users / 5;
    const us_config_override over[] = {
        {"user_status.redis_address", argv[1]},
        {"user_status.storage", argv[2]},
        {"user_status.expected_users", argv[4]},
        {"user_status.redis_prefix", argc > 6 ? argv[6] : "bench"},
        {"log_level", "warn"},
    };
    us_config cfg;
    char err[512];
    if (us_config_load(&cfg, NULL, NULL, over, sizeof(over) / sizeof(over[0]), err,
                       sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    us_redis *r = us_redis_new(&cfg, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char (*ids)[ID_MAX] = malloc(users * sizeof(*ids));
    us_user_update *ups = calloc(WRITE_BATCH, sizeof(*ups));
    uint8_t *refused = malloc(WRITE_BATCH);
    us_user_ref refs[READ_BATCH];
    us_status out[READ_BATCH];
    if (!ids || !ups || !refused) return 1;
    for (size_t i = 0; i < users; i++) snprintf(ids[i], ID_MAX, "%zu", ID_BASE + i);

    char host[256];
    int port = 0;
    sscanf(argv[1], "%255[^:]:%d", host, &port);
    redisContext *info = redisConnect(host, port);
    if (!info || info->err) {
        fprintf(stderr, "cannot connect to %s\n", argv[1]);
        return 1;
    }

    int64_t t = (int64_t)time(NULL);
    phase w, u, rd;
    phase_start(&w, info);
    if (write_all(r, ids, users, ups, refused, t, t - 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "write: %s\n", err);
        return 1;
    }
    phase_end(&w, info);
    phase_start(&u, info);
    if (write_all(r, ids, users, ups, refused, US_TIME_NONE, t, err, sizeof(err)) != 0) {
        fprintf(stderr, "update: %s\n", err);
        return 1;
    }
    phase_end(&u, info);

    uint64_t seed = 42, found = 0;
    phase_start(&rd, info);
    for (size_t done = 0; done < reads; done += READ_BATCH) {
        for (size_t k = 0; k < READ_BATCH; k++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            refs[k].user = ids[(seed >> 33) % users];
            refs[k].len = strlen(refs[k].user);
        }
        if (us_redis_get(r, refs, READ_BATCH, out, err, sizeof(err)) != 0) {
            fprintf(stderr, "read: %s\n", err);
            return 1;
        }
        for (size_t k = 0; k < READ_BATCH; k++) found += out[k].online == t;
    }
    phase_end(&rd, info);
    size_t nread = (reads + READ_BATCH - 1) / READ_BATCH * READ_BATCH;
    printf("{\"storage\": \"%s\", \"users\": %zu, "
           "\"write_users_per_s\": %.0f, \"write_client_us\": %.2f, \"write_redis_us\": %.2f, "
           "\"update_users_per_s\": %.0f, \"update_client_us\": %.2f, \"update_redis_us\": %.2f, "
           "\"read_users_per_s\": %.0f, \"read_client_us\": %.2f, \"read_redis_us\": %.2f, "
           "\"reads_found\": %.4f}\n",
           argv[2], users, (double)users / w.wall, w.client * 1e6 / (double)users,
           w.redis * 1e6 / (double)users, (double)users / u.wall, u.client * 1e6 / (double)users,
           u.redis * 1e6 / (double)users, (double)nread / rd.wall,
           rd.client * 1e6 / (double)nread, rd.redis * 1e6 / (double)nread,
           (double)found / (double)nread);
    redisFree(info);
    us_redis_free(r);
    us_config_free(&cfg);
    free(ids);
    free(ups);
    free(refused);
    return found == nread ? 0 : 1;
}
