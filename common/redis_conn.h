/* Redis connections: address parsing, connecting with timeouts, AUTH and SELECT.
 *
 * Every connection the store opens -- to a shard, a cluster node, a sentinel -- goes through
 * us_redis_connect, so timeouts and credentials are applied the same way everywhere. */
#ifndef US_REDIS_CONN_H
#define US_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <sys/time.h>

/* A parsed Redis address: "host:port" or "redis://[user:pass@]host:port[/db]". */
typedef struct us_redis_addr {
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
} us_redis_addr;

/* Parses one address. Returns 0, or -1 with the reason in err; the reason quotes the address
 * with its password masked. */
int us_redis_addr_parse(const char *text, us_redis_addr *addr, char *err, size_t errlen);

/* Fills credentials an address lacks (no password) from the configured defaults. */
void us_redis_addr_default_auth(us_redis_addr *a, const char *user, const char *password);

/* Timeouts of every connection. */
typedef struct us_redis_conn_opts {
    struct timeval connect_timeout; /* Bounds the TCP connect. */
    struct timeval io_timeout;      /* Bounds every read and write (SO_RCVTIMEO/SO_SNDTIMEO). */
} us_redis_conn_opts;

/* Opens a blocking connection with the timeouts of opts, then AUTH and SELECT as the address says.
 * Returns the context (the caller frees it with redisFree), or NULL with err set. */
redisContext *us_redis_connect(const us_redis_addr *a, const us_redis_conn_opts *opts, char *err,
                               size_t errlen);

/* Runs one command and waits for its reply. Returns the reply (freeReplyObject), or NULL with err
 * naming the address and the command when the connection failed or Redis answered an error. */
redisReply *us_redis_command(redisContext *c, const us_redis_addr *a, int argc, const char **argv,
                             char *err, size_t errlen);

#endif
