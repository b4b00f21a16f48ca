/* Hashes that place users: FNV-1a 64 of the user id, and Jump consistent hash over it.
 *
 * These two choose a user's shard exactly as Centrifugo does (so an existing sharded deployment's
 * data is found where Centrifugo put it), and the bucket model uses them again, decorrelated, to
 * choose the user's bucket within its shard. */
#ifndef US_HASH_H
#define US_HASH_H

#include <stddef.h>
#include <stdint.h>

/* 64-bit FNV-1a of a byte string. */
uint64_t us_fnv1a64(const void *data, size_t len);

/* Jump consistent hash (Lamport & Veach): the bucket in [0, buckets) of key. Growing buckets from
 * n to n+1 moves only the keys that land in the new bucket. */
int32_t us_jump_hash(uint64_t key, int32_t buckets);

/* The splitmix64 finaliser: a bijective 64-bit mix, to derive a second, independent hash. */
uint64_t us_mix64(uint64_t x);

/* The shard of a user among nshards: jump_hash(fnv1a_64(user), nshards), as Centrifugo places
 * users. */
size_t us_shard_for_user(const char *user, size_t user_len, size_t nshards);

#endif
