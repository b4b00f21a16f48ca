/* Status change tests: the presence state machine against a brute-force reference, its index
 * text, and the change message codec driven by schemas/vectors/changes.tsv. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "changes.h"
#include "test_helpers.h"

#define NONE US_PRESENCE_NONE

static const us_presence_rules rules = {.offline_after_ms = 60000, .away_after_ms = 300000};

static void assert_transition(const us_transition *t, us_status_kind status, int64_t since)
{
    assert_string_equal(us_status_kind_name(t->status), us_status_kind_name(status));
    assert_int_equal(t->since, since);
}

static void test_first_active_event_makes_a_user_online_at_its_time(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 1000, out), 1);
    assert_transition(&out[0], US_STATUS_ONLINE, 1000);
    assert_int_equal(out[0].active, 1000);
    assert_int_equal(out[0].online, NONE);
    assert_int_equal(us_presence_deadline(&rules, &p, 1000), 61000); /* Offline before away. */
}

static void test_heartbeat_only_user_is_away(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_ONLINE, 1000, out), 1);
    assert_transition(&out[0], US_STATUS_AWAY, 1000);
}

static void test_heartbeats_keep_a_user_online_until_activity_goes_stale(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 0, out);
    for (int64_t t = 25000; t <= 400000; t += 25000) {
        size_t n = us_presence_apply(&rules, &p, US_EVENT_ONLINE, t, out);
        if (t < 300000) assert_int_equal(n, 0);
        if (t == 300000) {
            assert_int_equal(n, 1);
            assert_transition(&out[0], US_STATUS_AWAY, 300000);
        }
    }
    /* Silence: offline one offline_after after the last heartbeat. */
    assert_int_equal(us_presence_deadline(&rules, &p, 400000), 460000);
    assert_int_equal(us_presence_advance(&rules, &p, 459999, out), 0);
    assert_int_equal(us_presence_advance(&rules, &p, 10000000, out), 1);
    assert_transition(&out[0], US_STATUS_OFFLINE, 460000);
}

static void test_late_scan_reports_every_missed_transition_at_its_own_time(void **state)
{
    us_presence_rules r = {.offline_after_ms = 3000, .away_after_ms = 1000};
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&r, &p, US_EVENT_ACTIVE, 10000, out);
    assert_int_equal(us_presence_deadline(&r, &p, 10000), 11000);
    assert_int_equal(us_presence_advance(&r, &p, 99000, out), 2);
    assert_transition(&out[0], US_STATUS_AWAY, 11000);
    assert_transition(&out[1], US_STATUS_OFFLINE, 13000);
    /* Offline, and the activity is stale: nothing left to watch. */
    assert_int_equal(us_presence_deadline(&r, &p, 99000), NONE);
}

static void test_event_after_silence_reports_offline_then_online(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 0, out);
    /* No scan ran: the event itself reports the offline period before it. */
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 100000, out), 2);
    assert_transition(&out[0], US_STATUS_OFFLINE, 60000);
    assert_transition(&out[1], US_STATUS_ONLINE, 100000);
}

static void test_delete_makes_an_online_user_offline_at_the_delete(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 1000, out);
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_DELETE, 2000, out), 1);
    assert_transition(&out[0], US_STATUS_OFFLINE, 2000);
    assert_int_equal(out[0].active, NONE);
    assert_int_equal(us_presence_deadline(&rules, &p, 2000), NONE);
    /* A delete of an offline user changes nothing. */
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_DELETE, 3000, out), 0);
}

static void test_late_event_never_moves_history_backwards(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 100000, out);
    assert_int_equal(us_presence_advance(&rules, &p, 170000, out), 1);
    assert_transition(&out[0], US_STATUS_OFFLINE, 160000);
    /* An event from before the offline transition, consumed after it: back online, at the
     * offline time rather than before it. */
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 150000, out), 1);
    assert_transition(&out[0], US_STATUS_ONLINE, 160000);
    assert_int_equal(us_presence_deadline(&rules, &p, 150000), 210000);
    /* An old event that changes nothing reports nothing. */
    assert_int_equal(us_presence_apply(&rules, &p, US_EVENT_ONLINE, 90000, out), 0);
}

static void test_offline_user_is_kept_while_its_activity_matters_then_forgotten(void **state)
{
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&rules, &p, US_EVENT_ACTIVE, 0, out);
    assert_int_equal(us_presence_advance(&rules, &p, 100000, out), 1);
    assert_transition(&out[0], US_STATUS_OFFLINE, 60000);
    /* Should the user come back before 300 s, it is online, not away: keep it until then. */
    assert_int_equal(us_presence_deadline(&rules, &p, 100000), 300000);
    /* A scan past that time reports nothing and leaves nothing due. */
    assert_int_equal(us_presence_advance(&rules, &p, 300500, out), 0);
    assert_int_equal(us_presence_deadline(&rules, &p, 300500), NONE);
}

static void test_away_after_shorter_than_offline_after(void **state)
{
    us_presence_rules r = {.offline_after_ms = 3000, .away_after_ms = 1000};
    us_presence p;
    us_presence_init(&p);
    us_transition out[US_PRESENCE_MAX_TRANSITIONS];
    us_presence_apply(&r, &p, US_EVENT_ACTIVE, 0, out);
    assert_int_equal(us_presence_advance(&r, &p, 1500, out), 1);
    assert_transition(&out[0], US_STATUS_AWAY, 1000);
    assert_int_equal(us_presence_apply(&r, &p, US_EVENT_ONLINE, 2000, out), 0); /* Still away. */
    assert_int_equal(us_presence_apply(&r, &p, US_EVENT_ACTIVE, 2500, out), 1);
    assert_transition(&out[0], US_STATUS_ONLINE, 2500);
}

static void test_index_text_round_trips(void **state)
{
    us_presence p = {US_STATUS_AWAY, 1627107289123, NONE, 1627107280000}, q = {0};
    char buf[US_PRESENCE_TEXT_MAX];
    int n = us_presence_format(&p, buf, sizeof(buf));
    assert_string_equal(buf, "a 1627107289123 - 1627107280000");
    assert_int_equal(us_presence_parse(buf, (size_t)n, &q), 0);
    assert_int_equal(q.status, US_STATUS_AWAY);
    assert_int_equal(q.since, 1627107289123);
    assert_int_equal(q.active, NONE);
    assert_int_equal(q.online, 1627107280000);
    us_presence big = {US_STATUS_ONLINE, INT64_MAX, INT64_MAX, INT64_MAX};
    n = us_presence_format(&big, buf, sizeof(buf));
    assert_true(n > 0);
    assert_int_equal(us_presence_parse(buf, (size_t)n, &q), 0);
    assert_int_equal(q.online, INT64_MAX);
}

static void test_index_text_rejects_garbage(void **state)
{
    static const char *bad[] = {"",          "o",       "x 1 2 3",   "o 1 2",      "o 1 2 3 4",
                                "o 1  2 3",  "o a 2 3", "o 1 2 3 ",  "o -1 2 3",   "o1 2 3 4",
                                "o 99999999999999999999 1 2"};
    us_presence q;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (us_presence_parse(bad[i], strlen(bad[i]), &q) == 0) fail_msg("accepted '%s'", bad[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Model check. Time is discrete (ticks); events of a tick carry that tick as their time. The
 * reference evaluates the status at every tick, and after every event, straight from the
 * definition, and records a change whenever it differs from the last one. The machine sees only
 * what the worker gives it: the events, and scans at random moments that advance it when its
 * deadline has passed; between calls its state goes through the index text, and it is forgotten
 * when its deadline says it may be. Both must report the same (status, since) sequence, and a scan
 * at tick c must have reported everything the reference has before the events of tick c. */

#define TICKS 160
#define MAX_EVENTS 64
#define MAX_CHANGES (4 * TICKS)

typedef struct ref_event {
    int64_t t;
    us_event_type type;
} ref_event;

static us_status_kind reference_status(int64_t a, int64_t o, int64_t t, int64_t off, int64_t away)
{
    int64_t seen = a > o ? a : o;
    if (seen == NONE || t - seen >= off) return US_STATUS_OFFLINE;
    if (a == NONE || t - a >= away) return US_STATUS_AWAY;
    return US_STATUS_ONLINE;
}

static void test_machine_equals_brute_force_reference(void **state)
{
    srand(20261204);
    for (int round = 0; round < 20000; round++) {
        int64_t off = 1 + rand() % 20, away = 1 + rand() % 20;
        us_presence_rules r = {.offline_after_ms = off, .away_after_ms = away};
        ref_event ev[MAX_EVENTS];
        int nev = rand() % MAX_EVENTS;
        for (int i = 0; i < nev; i++) {
            ev[i].t = rand() % (TICKS - 10);
            int k = rand() % 10;
            ev[i].type = k < 5 ? US_EVENT_ONLINE : k < 9 ? US_EVENT_ACTIVE : US_EVENT_DELETE;
        }
        for (int i = 1; i < nev; i++) /* Sort by time: events arrive in time order here. */
            for (int j = i; j > 0 && ev[j].t < ev[j - 1].t; j--) {
                ref_event x = ev[j];
                ev[j] = ev[j - 1];
                ev[j - 1] = x;
            }

        /* Reference. */
        us_transition want[MAX_CHANGES];
        int nwant = 0, before_events[TICKS + 1];
        int64_t a = NONE, o = NONE;
        us_status_kind last = US_STATUS_OFFLINE;
        for (int64_t t = 0, e = 0; t <= TICKS; t++) {
            us_status_kind s = reference_status(a, o, t, off, away);
            if (s != last) want[nwant++] = (us_transition){s, t, a, o}, last = s;
            before_events[t] = nwant;
            for (; e < nev && ev[e].t == t; e++) {
                if (ev[e].type == US_EVENT_DELETE) a = o = NONE;
                if (ev[e].type == US_EVENT_ACTIVE) a = t;
                if (ev[e].type == US_EVENT_ONLINE) o = t;
                s = reference_status(a, o, t, off, away);
                if (s != last) want[nwant++] = (us_transition){s, t, a, o}, last = s;
            }
        }

        /* Machine, driven like the worker drives it. */
        int forget = rand() % 2;
        us_transition got[MAX_CHANGES + US_PRESENCE_MAX_TRANSITIONS];
        int ngot = 0;
        us_presence p;
        us_presence_init(&p);
        int64_t clock = 0, last_event = NONE, evaluated = NONE;
        for (int e = 0; e <= nev; e++) {
            int64_t next = e < nev ? ev[e].t : TICKS;
            while (rand() % 3) { /* Scans between the previous event and this one. */
                int64_t c = clock + rand() % (next - clock + 1);
                clock = c;
                int64_t d = us_presence_deadline(&r, &p, evaluated);
                if (d != NONE && d <= c) {
                    ngot += (int)us_presence_advance(&r, &p, c, &got[ngot]);
                    evaluated = c;
                    /* Nothing stays due after a scan: the worker would scan it forever. */
                    d = us_presence_deadline(&r, &p, evaluated);
                    if (d != NONE && d <= c)
                        fail_msg("round %d: deadline %lld still due after a scan at %lld", round,
                                 (long long)d, (long long)c);
                }
                if (forget && d == NONE) {
                    us_presence_init(&p);
                    evaluated = NONE;
                }
                if (c != last_event && ngot != before_events[c])
                    fail_msg("round %d: scan at %lld reported %d changes, reference %d", round,
                             (long long)c, ngot, before_events[c]);
            }
            if (e == nev) break;
            clock = last_event = ev[e].t;
            if (ev[e].t > evaluated) evaluated = ev[e].t;
            ngot += (int)us_presence_apply(&r, &p, ev[e].type, ev[e].t, &got[ngot]);
            char text[US_PRESENCE_TEXT_MAX];
            int len = us_presence_format(&p, text, sizeof(text));
            assert_true(len > 0);
            assert_int_equal(us_presence_parse(text, (size_t)len, &p), 0);
        }
        ngot += (int)us_presence_advance(&r, &p, TICKS, &got[ngot]);

        if (ngot != nwant) fail_msg("round %d: %d changes, reference %d", round, ngot, nwant);
        for (int i = 0; i < ngot; i++) {
            if (got[i].status != want[i].status || got[i].since != want[i].since)
                fail_msg("round %d change %d: %s@%lld, reference %s@%lld", round, i,
                         us_status_kind_name(got[i].status), (long long)got[i].since,
                         us_status_kind_name(want[i].status), (long long)want[i].since);
            if (!forget) { /* A forgotten user's stale times are not reported (by design). */
                assert_int_equal(got[i].active, want[i].active);
                assert_int_equal(got[i].online, want[i].online);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * Codec */

static int64_t opt_int(const char *s)
{
    return strcmp(s, "-") == 0 ? NONE : strtoll(s, NULL, 10);
}

static void test_change_vectors_encode_byte_exact_and_decode(void **state)
{
    FILE *f = open_schema_file("vectors/changes.tsv");
    char line[8192];
    int count = 0;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *c[9];
        assert_int_equal(tsv_split(line, c, 9), 8);
        us_change ch = {.user = c[1], .user_len = strlen(c[1])};
        ch.status = strcmp(c[2], "online") == 0 ? US_STATUS_ONLINE
                    : strcmp(c[2], "away") == 0 ? US_STATUS_AWAY
                                                : US_STATUS_OFFLINE;
        ch.since = strtoll(c[3], NULL, 10);
        ch.active = opt_int(c[4]);
        ch.online = opt_int(c[5]);
        if (strcmp(c[6], "-") != 0) {
            ch.has_state = true;
            ch.state = strcmp(c[6], "<empty>") == 0 ? "" : c[6];
            ch.state_len = strlen(ch.state);
        }
        char out[US_CHANGE_ENCODED_MAX];
        int len = us_change_encode(&ch, out, sizeof(out));
        unsigned char want[US_CHANGE_ENCODED_MAX];
        int wlen = hex_decode(c[7], want, sizeof(want));
        if (len != wlen || memcmp(out, want, (size_t)len) != 0) fail_msg("vector %s differs", c[0]);

        us_change got;
        char detail[128];
        if (us_change_decode(want, (size_t)wlen, &got, detail, sizeof(detail)) != 0)
            fail_msg("vector %s: %s", c[0], detail);
        assert_int_equal(got.user_len, ch.user_len);
        assert_memory_equal(got.user, ch.user, ch.user_len);
        assert_int_equal(got.status, ch.status);
        assert_int_equal(got.since, ch.since);
        assert_int_equal(got.active, ch.active);
        assert_int_equal(got.online, ch.online);
        assert_int_equal(got.has_state, ch.has_state);
        if (ch.has_state) {
            assert_int_equal(got.state_len, ch.state_len);
            assert_memory_equal(got.state, ch.state, ch.state_len);
        }
        count++;
    }
    fclose(f);
    assert_true(count >= 8);
}

static void test_change_decode_refuses_other_messages(void **state)
{
    /* {"type":"active","user":"42"}: an event, not a change. */
    static const unsigned char event[] = {0x82, 0xa4, 't', 'y', 'p', 'e', 0xa6, 'a', 'c',
                                          't',  'i',  'v', 'e', 0xa4, 'u', 's', 'e', 'r',
                                          0xa2, '4',  '2'};
    us_change c;
    char detail[128];
    assert_int_equal(us_change_decode(event, sizeof(event), &c, detail, sizeof(detail)), -1);
    assert_int_equal(us_change_decode("\xc1", 1, &c, detail, sizeof(detail)), -1);
    assert_int_equal(us_change_decode("\x90", 1, &c, detail, sizeof(detail)), -1);
}

static void test_change_encode_refuses_schema_violations(void **state)
{
    char buf[US_CHANGE_ENCODED_MAX];
    us_change empty_user = {.user = "", .user_len = 0, .since = 1, .active = NONE, .online = NONE};
    assert_int_equal(us_change_encode(&empty_user, buf, sizeof(buf)), -1);
    us_change no_since = {.user = "a", .user_len = 1, .since = NONE, .active = NONE,
                          .online = NONE};
    assert_int_equal(us_change_encode(&no_since, buf, sizeof(buf)), -1);
    us_change ok = {.user = "a", .user_len = 1, .since = 1, .active = NONE, .online = NONE};
    assert_int_equal(us_change_encode(&ok, buf, 8), -1); /* Buffer too small. */
    assert_true(us_change_encode(&ok, buf, sizeof(buf)) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_active_event_makes_a_user_online_at_its_time),
        cmocka_unit_test(test_heartbeat_only_user_is_away),
        cmocka_unit_test(test_heartbeats_keep_a_user_online_until_activity_goes_stale),
        cmocka_unit_test(test_late_scan_reports_every_missed_transition_at_its_own_time),
        cmocka_unit_test(test_event_after_silence_reports_offline_then_online),
        cmocka_unit_test(test_delete_makes_an_online_user_offline_at_the_delete),
        cmocka_unit_test(test_late_event_never_moves_history_backwards),
        cmocka_unit_test(test_offline_user_is_kept_while_its_activity_matters_then_forgotten),
        cmocka_unit_test(test_away_after_shorter_than_offline_after),
        cmocka_unit_test(test_index_text_round_trips),
        cmocka_unit_test(test_index_text_rejects_garbage),
        cmocka_unit_test(test_machine_equals_brute_force_reference),
        cmocka_unit_test(test_change_vectors_encode_byte_exact_and_decode),
        cmocka_unit_test(test_change_decode_refuses_other_messages),
        cmocka_unit_test(test_change_encode_refuses_schema_violations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
