/* Store benchmark: writes and reads user statuses through us_redis_apply and us_redis_get -- the
 * exact commands the worker and the query service send -- and prints one JSON line with the rates.
 * bench/memory.py runs it against a redis-server of its own for each storage model and adds the
 * memory figures.
 *
 *   us-store-bench ADDR STORAGE USERS EXPECTED_USERS [READS] [PREFIX]
 *
 * Users are "<1000000 + i>" (decimal ids, as most applications' user ids are), each written once
 * with an active and an online time, in batches of WRITE_BATCH like a worker's coalesced batch;
 * then READS random users are read in requests of READ_BATCH, like a buddy list. */
#include "config.h"
#include "redis_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WRITE_BATCH 10000 /* Users per us_redis_apply: the worker's default batch. */
#define READ_BATCH 100    /* Users per us_redis_get: a buddy list. */
#define ID_BASE 1000000   /* First user id. */
#define ID_MAX 24         /* Bytes of an id. */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

    int64_t t = (int64_t)time(NULL);
    double t0 = now_s();
    for (size_t first = 0; first < users; first += WRITE_BATCH) {
        size_t n = users - first < WRITE_BATCH ? users - first : WRITE_BATCH;
        for (size_t k = 0; k < n; k++) {
            us_user_update *u = &ups[k];
            u->user = ids[first + k];
            u->user_len = strlen(u->user);
            u->active = t - (int64_t)(k % 600);
            u->online = t;
        }
        if (us_redis_apply(r, ups, n, refused, err, sizeof(err)) != 0) {
            fprintf(stderr, "write: %s\n", err);
            return 1;
        }
    }
    double write_s = now_s() - t0;

    uint64_t seed = 42, found = 0;
    t0 = now_s();
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
    double read_s = now_s() - t0;
    size_t nread = (reads + READ_BATCH - 1) / READ_BATCH * READ_BATCH;
    printf("{\"storage\": \"%s\", \"users\": %zu, \"write_users_per_s\": %.0f, "
           "\"read_users_per_s\": %.0f, \"reads_found\": %.4f}\n",
           argv[2], users, (double)users / write_s, (double)nread / read_s,
           (double)found / (double)nread);
    us_redis_free(r);
    us_config_free(&cfg);
    free(ids);
    free(ups);
    free(refused);
    return found == nread ? 0 : 1;
}
