/* Implementation of the JSON reply writer. */
#include "json_writer.h"

#include "int_text.h"

#include <stdlib.h>
#include <string.h>

#define JW_INITIAL_CAP 256 /* Bytes. */

static void reserve(us_jw *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : JW_INITIAL_CAP;
    while (cap < b->len + extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
}

void us_jw_add(us_jw *b, const char *s, size_t n)
{
    reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void us_jw_cstr(us_jw *b, const char *s)
{
    us_jw_add(b, s, strlen(s));
}

void us_jw_int(us_jw *b, long long v)
{
    char tmp[US_INT_TEXT_MAX];
    us_jw_add(b, tmp, us_i64_text(tmp, v));
}

void us_jw_str(us_jw *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    reserve(b, n * 6 + 2);
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

void us_jw_error_object(us_jw *b, int code, const char *message)
{
    us_jw_cstr(b, "{\"code\":");
    us_jw_int(b, code);
    us_jw_cstr(b, ",\"message\":");
    us_jw_str(b, message, strlen(message));
    us_jw_add(b, "}", 1);
}

void us_jw_free(us_jw *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
