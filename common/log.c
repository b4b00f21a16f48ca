/* Implementation of leveled logging: one line per message, written with one write(2). */
#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define US_LOG_LINE_MAX 2048 /* Bytes; longer messages are cut. */

static us_log_level min_level = US_LOG_INFO;
static const char *log_tag = "userstatus";
static const char *level_names[] = {"debug", "info", "warn", "error"};

void us_log_set_level(us_log_level level)
{
    min_level = level;
}

void us_log_set_tag(const char *tag)
{
    log_tag = tag;
}

int us_log_level_parse(const char *text, us_log_level *level)
{
    for (int i = 0; i <= US_LOG_ERROR; i++) {
        if (strcmp(text, level_names[i]) == 0) {
            *level = (us_log_level)i;
            return 0;
        }
    }
    return -1;
}

void us_log(us_log_level level, const char *fmt, ...)
{
    if (level < min_level) return;

    char line[US_LOG_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s %s[%d] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level], log_tag,
                     (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t unused = write(STDERR_FILENO, line, len);
    (void)unused;
}

/* ---------------------------------------------------------------------------------------------
 * Escaping untrusted text.
 *
 * User ids and states come from clients and may hold anything: a newline would start a forged log
 * line, a bidirectional override would make a line read differently from what it holds, invalid
 * UTF-8 breaks log shippers. Valid, harmless UTF-8 passes unchanged so ordinary ids stay readable.
 * ------------------------------------------------------------------------------------------ */

#define ELLIPSIS_LEN 3

/* Length of the valid UTF-8 sequence at s (n > 0 bytes available), with its code point in *cp;
 * 0 when s does not start one (a stray continuation byte, a cut sequence, an overlong form, a
 * surrogate, or a code point over U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t v, min;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    } else if ((s[0] & 0xE0) == 0xC0) {
        len = 2, v = s[0] & 0x1F, min = 0x80;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3, v = s[0] & 0x0F, min = 0x800;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4, v = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* Code points above U+007F that are shown escaped: C1 controls, the line and paragraph
 * separators, and the bidirectional marks, embeddings, overrides and isolates. */
static bool escape_code_point(uint32_t cp)
{
    return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F ||
           (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

/* The text that shows one character (or one invalid byte) at s; returns its length in out (at
 * least 7 bytes) and sets *used to the bytes of s it stands for. */
static size_t escape_one(const unsigned char *s, size_t n, char *out, size_t *used)
{
    uint32_t cp;
    size_t len = utf8_sequence(s, n, &cp);
    if (len == 0) {
        *used = 1;
        return (size_t)snprintf(out, 8, "\\x%02x", s[0]);
    }
    *used = len;
    if (len > 1) {
        if (escape_code_point(cp)) return (size_t)snprintf(out, 8, "\\u%04x", (unsigned)cp);
        memcpy(out, s, len);
        return len;
    }
    switch (s[0]) {
    case '\n':
        return (size_t)snprintf(out, 8, "\\n");
    case '\r':
        return (size_t)snprintf(out, 8, "\\r");
    case '\t':
        return (size_t)snprintf(out, 8, "\\t");
    case '\\':
    case '\'':
    case '"':
        out[0] = '\\', out[1] = (char)s[0];
        return 2;
    }
    if (s[0] < 0x20 || s[0] == 0x7F) return (size_t)snprintf(out, 8, "\\x%02x", s[0]);
    out[0] = (char)s[0];
    return 1;
}

const char *us_log_escape(const char *s, size_t n, char *buf, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t shown = n < US_LOG_ESCAPE_SHOWN ? n : US_LOG_ESCAPE_SHOWN;
    size_t i = 0, o = 0;
    size_t cut_o = 0; /* Output length after which "..." and the NUL still fit. */
    while (i < shown) {
        char piece[8];
        size_t used, len = escape_one(p + i, n - i, piece, &used);
        if (i + used > shown) break; /* A character across the cut is left out whole. */
        if (o + len + 1 > cap) break;
        memcpy(buf + o, piece, len);
        o += len;
        i += used;
        if (o + ELLIPSIS_LEN + 1 <= cap) cut_o = o;
    }
    if (i < n) { /* Cut: back to where "..." fits (a tiny cap gets what fits of it). */
        o = cut_o;
        for (size_t k = 0; k < ELLIPSIS_LEN && o + 1 < cap; k++) buf[o++] = '.';
    }
    buf[o] = '\0';
    return buf;
}
