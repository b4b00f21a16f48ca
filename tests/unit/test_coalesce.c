/* Coalescing tests: a batch reduced per user must leave the store exactly as applying its events
 * one by one would. The store here is a model of the Redis data model (docs/choices.md). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "coalesce.h"
#include "config.h"

#include <stdlib.h>
#include <string.h>

#define NUSERS 5

typedef struct model_user {
    int exists;
    int64_t active, online; /* US_TIME_NONE when absent. */
    int has_state;
    char state[US_STATE_MAX + 1];
} model_user;

static const char *user_names[NUSERS] = {"u0", "u1", "u2", "u3", "u4"};

static int user_index(const char *u, size_t len)
{
    for (int i = 0; i < NUSERS; i++)
        if (strlen(user_names[i]) == len && memcmp(user_names[i], u, len) == 0) return i;
    fail_msg("unknown user");
    return -1;
}

static void touch(model_user *m)
{
    if (!m->exists) {
        memset(m, 0, sizeof(*m));
        m->exists = 1;
        m->active = m->online = US_TIME_NONE;
    }
}

static void set_state(model_user *m, const char *s, size_t len)
{
    m->has_state = len > 0; /* An empty state clears it. */
    memcpy(m->state, s, len);
    m->state[len] = '\0';
}

/* Applies one event, as the worker would without coalescing. */
static void apply_event(model_user *store, const us_event *ev, int64_t t)
{
    model_user *m = &store[user_index(ev->user, ev->user_len)];
    if (ev->type == US_EVENT_DELETE) {
        memset(m, 0, sizeof(*m));
        return;
    }
    touch(m);
    if (ev->type == US_EVENT_ACTIVE && t > m->active) m->active = t;
    if (ev->type == US_EVENT_ONLINE && t > m->online) m->online = t;
    if (ev->has_state) set_state(m, ev->state, ev->state_len);
}

/* Applies one coalesced update, as us_redis_apply does: DEL, then ZADD GT + state replace. */
static void apply_update(model_user *store, const us_user_update *u)
{
    model_user *m = &store[user_index(u->user, u->user_len)];
    if (u->del) memset(m, 0, sizeof(*m));
    if (u->active == US_TIME_NONE && u->online == US_TIME_NONE) return;
    touch(m);
    if (u->active > m->active) m->active = u->active;
    if (u->online > m->online) m->online = u->online;
    if (u->has_state) set_state(m, u->state, u->state_len);
}

static void assert_same_store(const model_user *a, const model_user *b)
{
    for (int i = 0; i < NUSERS; i++) {
        assert_int_equal(a[i].exists, b[i].exists);
        if (!a[i].exists) continue;
        assert_int_equal(a[i].active, b[i].active);
        assert_int_equal(a[i].online, b[i].online);
        assert_int_equal(a[i].has_state, b[i].has_state);
        if (a[i].has_state) assert_string_equal(a[i].state, b[i].state);
    }
}

static us_event make_event(us_event_type type, const char *user, const char *state)
{
    us_event ev = {.type = type, .user = user, .user_len = strlen(user)};
    if (state) {
        ev.has_state = true;
        ev.state = state;
        ev.state_len = strlen(state);
    }
    return ev;
}

static us_batch batch;

static int setup(void **state)
{
    return us_batch_init(&batch, 64);
}

static int teardown(void **state)
{
    us_batch_free(&batch);
    return 0;
}

static void test_delete_then_update_in_one_batch(void **state)
{
    us_batch_reset(&batch);
    us_event del = make_event(US_EVENT_DELETE, "u1", NULL);
    us_event act = make_event(US_EVENT_ACTIVE, "u1", NULL);
    assert_int_equal(us_batch_add(&batch, &act, 500), 0);
    assert_int_equal(us_batch_add(&batch, &del, 0), 0);
    assert_int_equal(us_batch_add(&batch, &act, 100), 0);
    assert_int_equal(batch.count, 1);
    const us_user_update *u = &batch.updates[0];
    assert_true(u->del);
    assert_int_equal(u->active, 100); /* Not 500: that one was before the delete. */
    assert_int_equal(u->online, US_TIME_NONE);
}

static void test_update_then_delete_in_one_batch(void **state)
{
    us_batch_reset(&batch);
    us_event act = make_event(US_EVENT_ACTIVE, "u2", "dnd");
    us_event del = make_event(US_EVENT_DELETE, "u2", NULL);
    us_batch_add(&batch, &act, 100);
    us_batch_add(&batch, &del, 0);
    const us_user_update *u = &batch.updates[0];
    assert_true(u->del);
    assert_int_equal(u->active, US_TIME_NONE);
    assert_false(u->has_state);
}

static void test_older_event_after_newer_keeps_the_max(void **state)
{
    us_batch_reset(&batch);
    us_event on = make_event(US_EVENT_ONLINE, "u3", NULL);
    us_batch_add(&batch, &on, 200);
    us_batch_add(&batch, &on, 150);
    assert_int_equal(batch.updates[0].online, 200);
}

static void test_last_state_wins(void **state)
{
    us_batch_reset(&batch);
    us_event a = make_event(US_EVENT_ACTIVE, "u4", "away");
    us_event b = make_event(US_EVENT_ACTIVE, "u4", "dnd");
    us_event c = make_event(US_EVENT_ONLINE, "u4", NULL);
    us_batch_add(&batch, &a, 300);
    us_batch_add(&batch, &b, 100); /* Older time, later in the partition: its state wins. */
    us_batch_add(&batch, &c, 50);
    const us_user_update *u = &batch.updates[0];
    assert_true(u->has_state);
    assert_int_equal(u->state_len, 3);
    assert_memory_equal(u->state, "dnd", 3);
    assert_int_equal(u->active, 300);
    assert_int_equal(u->online, 50);
}

static void test_users_keep_first_seen_order_and_reset_forgets_them(void **state)
{
    us_batch_reset(&batch);
    us_event e2 = make_event(US_EVENT_ACTIVE, "u2", NULL);
    us_event e0 = make_event(US_EVENT_ACTIVE, "u0", NULL);
    us_batch_add(&batch, &e2, 1);
    us_batch_add(&batch, &e0, 1);
    us_batch_add(&batch, &e2, 2);
    assert_int_equal(batch.count, 2);
    assert_memory_equal(batch.updates[0].user, "u2", 2);
    assert_memory_equal(batch.updates[1].user, "u0", 2);
    us_batch_reset(&batch);
    assert_int_equal(batch.count, 0);
    us_batch_add(&batch, &e0, 7);
    assert_int_equal(batch.count, 1);
    assert_int_equal(batch.updates[0].active, 7);
}

static void test_batch_refuses_users_beyond_capacity(void **state)
{
    us_batch small;
    assert_int_equal(us_batch_init(&small, 2), 0);
    us_event a = make_event(US_EVENT_ACTIVE, "u0", NULL), b = make_event(US_EVENT_ACTIVE, "u1", NULL),
             c = make_event(US_EVENT_ACTIVE, "u2", NULL);
    assert_int_equal(us_batch_add(&small, &a, 1), 0);
    assert_int_equal(us_batch_add(&small, &b, 1), 0);
    assert_int_equal(us_batch_add(&small, &c, 1), -1);
    assert_int_equal(us_batch_add(&small, &a, 2), 0); /* Known users still merge. */
    us_batch_free(&small);
}

/* Random event sequences over a random prior store: coalesced == one by one. */
static void test_coalescing_equals_one_by_one_application(void **state)
{
    static const char *states[] = {"", "dnd", "away", "busy"};
    srand(12345);
    for (int round = 0; round < 5000; round++) {
        model_user direct[NUSERS], coalesced[NUSERS];
        memset(direct, 0, sizeof(direct));
        for (int i = 0; i < NUSERS; i++) {
            if (rand() % 2) continue;
            touch(&direct[i]);
            direct[i].active = rand() % 3 ? rand() % 100 : US_TIME_NONE;
            direct[i].online = rand() % 3 ? rand() % 100 : US_TIME_NONE;
            if (rand() % 2) set_state(&direct[i], "old", 3);
        }
        memcpy(coalesced, direct, sizeof(direct));

        us_batch_reset(&batch);
        int nevents = 1 + rand() % 30;
        for (int k = 0; k < nevents; k++) {
            us_event_type type = (us_event_type)(US_EVENT_ACTIVE + rand() % 3);
            const char *st = type != US_EVENT_DELETE && rand() % 3 == 0 ? states[rand() % 4] : NULL;
            us_event ev = make_event(type, user_names[rand() % NUSERS], st);
            int64_t t = rand() % 100;
            apply_event(direct, &ev, t);
            assert_int_equal(us_batch_add(&batch, &ev, t), 0);
        }
        for (size_t i = 0; i < batch.count; i++) apply_update(coalesced, &batch.updates[i]);
        assert_same_store(direct, coalesced);
    }
}

static void test_fnv1a64_known_values(void **state)
{
    assert_true(us_fnv1a64("", 0) == 0xcbf29ce484222325ULL);
    assert_true(us_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
    assert_true(us_fnv1a64("foobar", 6) == 0x85944171f73967e8ULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delete_then_update_in_one_batch),
        cmocka_unit_test(test_update_then_delete_in_one_batch),
        cmocka_unit_test(test_older_event_after_newer_keeps_the_max),
        cmocka_unit_test(test_last_state_wins),
        cmocka_unit_test(test_users_keep_first_seen_order_and_reset_forgets_them),
        cmocka_unit_test(test_batch_refuses_users_beyond_capacity),
        cmocka_unit_test(test_coalescing_equals_one_by_one_application),
        cmocka_unit_test(test_fnv1a64_known_values),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
