/* Redis Cluster support: key slots, redirect parsing and the slot map.
 *
 * Only the parts of the cluster protocol a client needs: which slot a key hashes to, what a
 * MOVED/ASK error says, and which master owns each slot (from CLUSTER SHARDS, or CLUSTER SLOTS on
 * servers without it). The pipelining around them lives in redis_store.c. */
#ifndef US_REDIS_CLUSTER_H
#define US_REDIS_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#define US_CLUSTER_SLOTS 16384

/* CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with. */
uint16_t us_crc16(const char *buf, size_t len);

/* The slot of a key, honouring {hash tags} exactly as Redis does. */
uint16_t us_cluster_slot(const char *key, size_t len);

typedef enum us_redirect_kind {
    US_REDIRECT_NONE = 0,
    US_REDIRECT_MOVED, /* The slot has a new owner: update the map. */
    US_REDIRECT_ASK,   /* The slot is migrating: ask the target once, with ASKING first. */
} us_redirect_kind;

typedef struct us_redirect {
    us_redirect_kind kind;
    uint16_t slot;
    char host[256];
    int port;
} us_redirect;

/* Parses an error reply text such as "MOVED 3999 127.0.0.1:6381" or "ASK 3999 [::1]:6381".
 * Returns 0 and fills *r for a well-formed redirect, or -1 (r->kind = US_REDIRECT_NONE) for any
 * other text. */
int us_redirect_parse(const char *text, size_t len, us_redirect *r);

/* One slot range and the master that serves it. */
typedef struct us_slot_range {
    uint16_t first, last;
    char host[256];
    int port;
} us_slot_range;

/* Reads the master ranges out of a CLUSTER SHARDS reply (RESP2: each shard a flat array of
 * name/value pairs; slot numbers as integers or strings). Fills up to cap ranges and returns their
 * number, or -1 when the reply has an unexpected shape. Shards without an online master are
 * skipped. */
int us_cluster_parse_shards(const redisReply *reply, us_slot_range *out, size_t cap);

/* The same for a CLUSTER SLOTS reply. */
int us_cluster_parse_slots(const redisReply *reply, us_slot_range *out, size_t cap);

#endif
