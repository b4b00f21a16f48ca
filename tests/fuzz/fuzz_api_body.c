/* Fuzz target: the HTTP request body as userstatus-query reads it — jansson's parser with
 * JSON_REJECT_DUPLICATES, then request validation (us_api_parse_users) for a plain command and for
 * every command of a batch in both shapes ({"<method>":{params}} and {"method":..,"params":..}).
 *
 * Properties checked: accepted users are strings of 1..max_user_id_length bytes, at most
 * max_users_per_request of them; an accepted state is at most US_STATE_MAX bytes. The limits are
 * set small so that the fuzzer reaches them. Also exercises the constant-time key comparison. */
#include "api.h"
#include "config.h"
#include "log.h"
#include "fuzz_replay.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_USERS 8
#define FUZZ_MAX_USER_ID 16

static void check(int cond)
{
    if (!cond) abort();
}

static const us_config *config(void)
{
    static us_config cfg;
    static int ready;
    if (!ready) {
        char err[256];
        us_log_set_level(US_LOG_ERROR);
        if (us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)) != 0) abort();
        cfg.query.max_users_per_request = FUZZ_MAX_USERS;
        cfg.query.max_user_id_length = FUZZ_MAX_USER_ID;
        ready = 1;
    }
    return &cfg;
}

static void validate(json_t *params)
{
    const us_config *cfg = config();
    for (int want_state = 0; want_state <= 1; want_state++) {
        us_user_ref *users = NULL;
        size_t n = 0, state_len = 0;
        const char *state = NULL;
        int has_state = 0;
        char err[160];
        int rc = us_api_parse_users(cfg, params, want_state, &users, &n, &state, &state_len,
                                    &has_state, err, sizeof(err));
        if (rc == 0) {
            check(n <= FUZZ_MAX_USERS);
            for (size_t i = 0; i < n; i++) {
                check(users[i].len >= 1 && users[i].len <= FUZZ_MAX_USER_ID);
                check(users[i].user[users[i].len] == '\0');
            }
            check(!has_state || (want_state && state_len <= US_STATE_MAX && state));
        } else {
            check(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
        }
        free(users);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The key comparison: the first half against the second as a C string. */
    char expected[64];
    size_t half = size / 2 < sizeof(expected) - 1 ? size / 2 : sizeof(expected) - 1;
    memcpy(expected, data, half);
    expected[half] = '\0';
    size_t elen = strlen(expected);
    int eq = us_api_key_equal((const char *)data + size - elen, elen, expected);
    check(eq == (memcmp(data + size - elen, expected, elen) == 0));

    json_error_t jerr;
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) return 0;
    validate(doc);
    json_t *list = json_is_object(doc) ? json_object_get(doc, "commands") : NULL;
    for (size_t i = 0; json_is_array(list) && i < json_array_size(list) && i < 64; i++) {
        json_t *item = json_array_get(list, i);
        json_t *method = json_object_get(item, "method");
        if (json_is_object(item) && json_is_string(method)) {
            validate(json_object_get(item, "params"));
        } else if (json_is_object(item) && json_object_size(item) == 1) {
            void *it = json_object_iter(item);
            check(json_object_iter_key(it) != NULL);
            validate(json_object_iter_value(it));
        }
    }
    json_decref(doc);
    return 0;
}
