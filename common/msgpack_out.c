/* Implementation of the fixed-buffer msgpack writer. */
#include "msgpack_out.h"

#include <string.h>

static int out_write(void *data, const char *src, size_t n)
{
    us_msgpack_out *b = data;
    if (b->len + n > b->cap) {
        b->overflow = true;
        return -1;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

void us_msgpack_out_init(us_msgpack_out *out, msgpack_packer *pk, char *buf, size_t cap)
{
    out->p = buf;
    out->len = 0;
    out->cap = cap;
    out->overflow = false;
    msgpack_packer_init(pk, out, out_write);
}

void us_msgpack_pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

int us_msgpack_out_result(const us_msgpack_out *out)
{
    return out->overflow ? -1 : (int)out->len;
}
