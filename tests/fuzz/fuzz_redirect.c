/* Fuzz target: Redis Cluster replies as the store reads them — MOVED/ASK redirect texts
 * (us_redirect_parse), key slots (us_cluster_slot) and CLUSTER SHARDS / CLUSTER SLOTS replies
 * (us_cluster_parse_shards, us_cluster_parse_slots) decoded from raw RESP by hiredis' reader.
 *
 * Properties checked: a parsed redirect has a slot < 16384, a port in 1..65535 and a NUL-terminated
 * host; a slot map has ranges inside 0..16383 with first <= last, and never more than cap. */
#include "redis_topology.h"
#include "fuzz_replay.h"

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_RANGES 8

static void check(int cond)
{
    if (!cond) abort();
}

static void check_ranges(const us_slot_range *r, int n)
{
    check(n <= FUZZ_RANGES);
    for (int i = 0; i < n; i++) {
        check(r[i].first <= r[i].last && r[i].last < US_CLUSTER_SLOTS);
        check(memchr(r[i].host, '\0', sizeof(r[i].host)) != NULL);
    }
}

/* hiredis 0.14's reader allocates a multi-bulk reply's element array as soon as it reads the
 * "*<count>" header, trusting the count (hiredis 1.0 added a limit). Replies come from Redis
 * servers, which are trusted, so a count larger than the input is not a case for our parsers: it
 * would only make libFuzzer report hiredis' allocation (found in CI: "*6222222192" asked for
 * 6 GB). Such inputs skip the reader; every element takes at least 3 bytes, so a count above the
 * input size can never complete anyway. Over-rejecting (a '*' inside a bulk string) only skips an
 * input. */
static int plausible_resp(const char *text, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        /* Any '*', not only at line starts: hiredis skips the two bytes after a bulk string
         * without checking that they are CRLF, so a header can follow any two bytes. */
        if (text[i] != '*') continue;
        unsigned long long count = 0;
        for (size_t k = i + 1; k < size && text[k] >= '0' && text[k] <= '9'; k++) {
            count = count * 10 + (unsigned long long)(text[k] - '0');
            if (count > size) return 0;
        }
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (!text) abort();
    memcpy(text, data, size);

    us_redirect rd;
    if (us_redirect_parse(text, size, &rd) == 0) {
        check(rd.kind == US_REDIRECT_MOVED || rd.kind == US_REDIRECT_ASK);
        check(rd.slot < US_CLUSTER_SLOTS && rd.port >= 1 && rd.port <= 65535);
        check(memchr(rd.host, '\0', sizeof(rd.host)) != NULL);
    } else {
        check(rd.kind == US_REDIRECT_NONE);
    }
    check(us_cluster_slot(text, size) < US_CLUSTER_SLOTS);

    if (!plausible_resp(text, size)) {
        free(text);
        return 0;
    }
    redisReader *reader = redisReaderCreate();
    if (!reader) abort();
    if (redisReaderFeed(reader, text, size) == REDIS_OK) {
        void *reply = NULL;
        for (int i = 0; i < 4 && redisReaderGetReply(reader, &reply) == REDIS_OK && reply; i++) {
            us_slot_range ranges[FUZZ_RANGES];
            int n = us_cluster_parse_shards(reply, ranges, FUZZ_RANGES);
            if (n >= 0) check_ranges(ranges, n);
            n = us_cluster_parse_slots(reply, ranges, FUZZ_RANGES);
            if (n >= 0) check_ranges(ranges, n);
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(reader);
    free(text);
    return 0;
}
