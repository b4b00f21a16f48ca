/* Status changes: the per-user presence state machine (online, away, offline) and the codec of
 * the change messages the worker publishes (schemas/changes.md).
 *
 * Pure logic, no I/O: the worker's engine (worker/changes.c) keeps one us_presence per user that
 * is not offline in a Redis index, feeds it the user's events in partition order and advances it
 * when its deadline passes; every transition it reports becomes one change message. */
#ifndef US_CHANGES_H
#define US_CHANGES_H

#include "event.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define US_PRESENCE_NONE (-1) /* No time of this kind (ms fields of us_presence). */

typedef enum us_status_kind {
    US_STATUS_OFFLINE = 0,
    US_STATUS_AWAY = 1,
    US_STATUS_ONLINE = 2,
} us_status_kind;

/* When presence ends and activity goes stale (changes.offline_after, changes.away_after). */
typedef struct us_presence_rules {
    int64_t offline_after_ms; /* Online or away while an event arrived within this. */
    int64_t away_after_ms;    /* Away when the last `active` is older than this. */
} us_presence_rules;

/* One user's presence as last published. */
typedef struct us_presence {
    us_status_kind status; /* The status last emitted (OFFLINE for a user never seen). */
    int64_t since;         /* Unix ms of that transition, or US_PRESENCE_NONE. */
    int64_t active;        /* Unix ms of the last `active` event, or US_PRESENCE_NONE. */
    int64_t online;        /* Unix ms of the last `online` event, or US_PRESENCE_NONE. */
} us_presence;

/* One transition: the user's status became `status` at `since`; active and online are the
 * user's times (ms, or US_PRESENCE_NONE) when it did. */
typedef struct us_transition {
    us_status_kind status;
    int64_t since;
    int64_t active;
    int64_t online;
} us_transition;

/* Most transitions one call of us_presence_advance / us_presence_apply reports. */
#define US_PRESENCE_MAX_TRANSITIONS 3

/* A user never seen (or forgotten): offline, no times. */
void us_presence_init(us_presence *p);

/* The status that times active/online (ms, or US_PRESENCE_NONE) give at time t: offline when no
 * event is younger than offline_after, else away when no `active` is younger than away_after,
 * else online. */
us_status_kind us_presence_status_at(const us_presence_rules *r, int64_t active, int64_t online,
                                     int64_t t);

/* Moves p forward to time `to` without a new event: reports in out[] (in order) each transition
 * whose time is after p->since and at most `to` -- the moment activity went stale (away) and the
 * moment presence ended (offline) -- each with that moment as its `since`. Returns how many. */
size_t us_presence_advance(const us_presence_rules *r, us_presence *p, int64_t to,
                           us_transition out[US_PRESENCE_MAX_TRANSITIONS]);

/* Applies one event of the user, of type `type` at time t (Unix ms, already resolved): first
 * advances to t, then takes the event; a status change it causes is reported with since =
 * max(t, p->since) (a late event never moves a user's history backwards). A delete forgets the
 * times and makes the user offline. Returns the number of transitions written to out[]. */
size_t us_presence_apply(const us_presence_rules *r, us_presence *p, us_event_type type, int64_t t,
                         us_transition out[US_PRESENCE_MAX_TRANSITIONS]);

/* The next time after `evaluated` at which p's status may change by itself (the time the worker
 * must look at it again), or US_PRESENCE_NONE when it never will and p may be forgotten: offline,
 * and its `active` too old to matter should the user come back. evaluated is the time p has been
 * advanced to: the latest event time applied, or the `to` of the last us_presence_advance
 * (US_PRESENCE_NONE: p->since). */
int64_t us_presence_deadline(const us_presence_rules *r, const us_presence *p, int64_t evaluated);

/* The schema name of a status: "online", "away", "offline". */
const char *us_status_kind_name(us_status_kind s);

/* Index entry text of p: "<o|a|f> <since> <active> <online>", ms or '-' for none. Returns the
 * length written (NUL-terminated), or -1 when cap is too small; US_PRESENCE_TEXT_MAX always
 * fits. */
#define US_PRESENCE_TEXT_MAX 96
int us_presence_format(const us_presence *p, char *buf, size_t cap);

/* Parses an index entry written by us_presence_format. Returns 0, or -1 when malformed. */
int us_presence_parse(const char *text, size_t len, us_presence *p);

/* A change message (schemas/changes.md). user and state point into caller memory. */
typedef struct us_change {
    const char *user;
    size_t user_len;
    us_status_kind status;
    int64_t since;  /* Unix ms. */
    int64_t active; /* Unix seconds, or US_PRESENCE_NONE. */
    int64_t online; /* Unix seconds, or US_PRESENCE_NONE. */
    bool has_state;
    const char *state;
    size_t state_len;
} us_change;

#define US_CHANGE_ENCODED_MAX 512 /* Bytes; the largest change us_change_encode produces. */

/* Encodes c canonically: map keys type ("change"), user, status, since, active?, online?, state?,
 * v (1). Returns the length, or -1 when c breaks a schema limit or cap is too small. */
int us_change_encode(const us_change *c, char *buf, size_t cap);

/* Decodes a change message; strings of *c point into buf. Unknown keys are ignored. Meant for the
 * changes topic, which only the worker writes: sizes declared inside the value are trusted. Returns
 * 0, or -1 with the reason in detail. */
int us_change_decode(const void *buf, size_t len, us_change *c, char *detail, size_t detail_len);

#endif
