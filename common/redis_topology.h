/* Redis topologies: the nodes of one instance, client-side shards, Sentinel or Cluster, and which
 * node serves what.
 *
 * A topology is a table of nodes (one connection each, opened lazily) plus a rule that routes a
 * group of commands to a node: client-side shards by the shard the caller computed (Jump over
 * FNV-1a of the user id); Sentinel to the one master the sentinels name (asked again after a
 * connection error or a READONLY reply); Cluster by key slot through a slot map read with CLUSTER
 * SHARDS (or CLUSTER SLOTS), fixed by MOVED replies and read again after them.
 *
 * The cluster protocol parts are pure functions (slot of a key, MOVED/ASK parsing, slot map
 * replies), tested without servers. The pipelining over a topology lives in redis_pipeline.c. */
#ifndef US_REDIS_TOPOLOGY_H
#define US_REDIS_TOPOLOGY_H

#include "config.h"
#include "redis_conn.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
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
    char host[256]; /* Empty: the host of the node that sent the redirect. */
    int port;
} us_redirect;

/* Parses an error reply text such as "MOVED 3999 127.0.0.1:6381" or "ASK 3999 [::1]:6381". An
 * empty host ("MOVED 3999 :6381", sent by nodes whose endpoint is unknown) leaves r->host empty:
 * the target is on the host of the node that answered. Returns 0 and fills *r for a well-formed
 * redirect, or -1 (r->kind = US_REDIRECT_NONE) for any other text. */
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

/* ---------------------------------------------------------------------------------------------
 * Topologies.
 * ------------------------------------------------------------------------------------------ */

#define US_NO_NODE UINT16_MAX

typedef enum us_topology_kind {
    US_TOPO_SHARDS,   /* One address, or client-side shards. */
    US_TOPO_SENTINEL, /* The master named by the sentinels. */
    US_TOPO_CLUSTER,  /* Redis Cluster. */
} us_topology_kind;

typedef struct us_redis_node {
    us_redis_addr addr;
    redisContext *c; /* NULL until used, and after any connection error. */
    size_t pending;  /* Replies expected for the commands appended since the last flush. */
    int used;        /* Received commands during the current operation. */
} us_redis_node;

typedef struct us_topology {
    us_topology_kind kind;
    us_redis_node *nodes;
    size_t nnodes, nodes_cap;
    size_t nshards; /* Client-side shards (US_TOPO_SHARDS), else 1. */
    us_redis_conn_opts opts;
    char user[128], password[256]; /* For nodes whose address carries no credentials. */
    int db;                        /* For data nodes whose address names no database. */

    us_redis_addr *seeds; /* Sentinels, or cluster seed nodes. */
    size_t nseeds;
    char *master_name;
    int resolve_needed;  /* Sentinel: ask the sentinels for the master before the next use. */
    uint16_t *slot_node; /* Cluster: node of every slot, US_NO_NODE when unknown. */
    int refresh_needed;  /* Cluster: read the slot map again before the next use. */

    /* us_topology_interrupt may run on another thread: it takes conn_mu, which the owner holds
     * whenever it opens or closes a node's connection or moves the node table. */
    pthread_mutex_t conn_mu;
    int interrupted; /* Under conn_mu. */
} us_topology;

/* Sets t up for the configured topology without connecting. Returns 0, or -1 with err set on a
 * bad address; t must be released with us_topology_release either way. */
int us_topology_init(us_topology *t, const us_config *cfg, char *err, size_t errlen);

/* Closes every connection and frees what t owns. Accepts a zeroed t. */
void us_topology_release(us_topology *t);

/* Brings the topology up to date before an operation (Sentinel look-up, cluster slot map).
 * Returns 0, or -1 with err set when no node can be known. */
int us_topology_prepare(us_topology *t, char *err, size_t errlen);

/* The node that serves a group of commands: for client-side shards the caller's shard, for
 * Sentinel the master, for Cluster the owner of key's slot. US_NO_NODE when the slot has none. */
uint16_t us_topology_route(const us_topology *t, size_t shard, const char *key, size_t klen);

/* Opens node idx's connection unless it is open. Returns 0, or -1 with err set (and the topology
 * marked for a new look-up). */
int us_topology_connect(us_topology *t, uint16_t idx, char *err, size_t errlen);

/* Records that node idx failed (connection or READONLY): closes it and marks the topology for a
 * new look-up before its next use. */
void us_topology_node_failed(us_topology *t, uint16_t idx);

/* Closes every node's connection (so no connection holds unread replies). */
void us_topology_close_all(us_topology *t);

/* The node at host:port, added with the default credentials if new. US_NO_NODE if the table is
 * full. */
uint16_t us_topology_node(us_topology *t, const char *host, int port);

/* Records a MOVED redirect: slot is now served by node idx; the map is read again before the next
 * round. */
void us_topology_moved(us_topology *t, uint16_t slot, uint16_t idx);

/* Reads the slot map from the first seed or known node that answers. Returns 0, or -1 with err. */
int us_topology_refresh(us_topology *t, char *err, size_t errlen);

/* Makes every operation in progress on another thread fail at once (the nodes' sockets are shut
 * down) and every later connection attempt fail: for stopping a thread blocked on a frozen Redis.
 * The only topology function that may be called from a thread other than the owner's. */
void us_topology_interrupt(us_topology *t);

/* Registers the topology's metrics (slot map refreshes, sentinel look-ups). */
void us_topology_metrics_register(void);

#endif
