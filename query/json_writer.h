/* A growable buffer for writing JSON replies, shared by the HTTP front ends (api.c, proxy.c). */
#ifndef US_JSON_WRITER_H
#define US_JSON_WRITER_H

#include <stddef.h>

typedef struct us_jw {
    char *p; /* malloc'd; NULL until the first write. Taken over by whoever sends it. */
    size_t len, cap;
} us_jw;

void us_jw_add(us_jw *b, const char *s, size_t n);
void us_jw_cstr(us_jw *b, const char *s);
void us_jw_int(us_jw *b, long long v);

/* Writes s[0..n) as a JSON string, quotes included: '"', '\\' and control characters escaped,
 * bytes >= 0x80 copied (every string written is checked UTF-8 before it gets here). */
void us_jw_str(us_jw *b, const char *s, size_t n);

/* Writes {"code":code,"message":message} (an error object, without its key). */
void us_jw_error_object(us_jw *b, int code, const char *message);

/* Frees the buffer (when it was not sent). */
void us_jw_free(us_jw *b);

#endif
