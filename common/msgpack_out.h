/* Packing msgpack into a caller's fixed buffer: the writer behind the event and change encoders. */
#ifndef US_MSGPACK_OUT_H
#define US_MSGPACK_OUT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

/* A fixed buffer msgpack packs into; overflow is set instead of writing past its end. */
typedef struct us_msgpack_out {
    char *p;
    size_t len, cap;
    bool overflow;
} us_msgpack_out;

/* Points a packer at buf[0..cap) through out (both the caller's, out outliving the packing). */
void us_msgpack_out_init(us_msgpack_out *out, msgpack_packer *pk, char *buf, size_t cap);

/* Packs s[0..n) as a msgpack str. */
void us_msgpack_pack_str(msgpack_packer *pk, const char *s, size_t n);

/* The packed length, or -1 when the buffer overflowed. */
int us_msgpack_out_result(const us_msgpack_out *out);

#endif
