/* Leveled logging to stderr, shared by the worker and the query service. */
#ifndef US_LOG_H
#define US_LOG_H

#include <stddef.h>

typedef enum us_log_level {
    US_LOG_DEBUG = 0,
    US_LOG_INFO,
    US_LOG_WARN,
    US_LOG_ERROR,
} us_log_level;

/* Sets the lowest level that is printed. */
void us_log_set_level(us_log_level level);

/* Parses "debug", "info", "warn" or "error"; returns 0 and sets *level, or -1 for other text. */
int us_log_level_parse(const char *text, us_log_level *level);

/* Prints one line: ISO time, level, program tag, pid and the formatted message. Thread-safe. */
void us_log(us_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Names the program in every line ("worker", "query"). The string must outlive the process. */
void us_log_set_tag(const char *tag);

/* Most bytes of an untrusted string (a user id, a state, a header) that a log line shows; longer
 * text is cut at a character boundary and ends in "...". */
#define US_LOG_ESCAPE_SHOWN 80
/* A buffer of this size always holds the whole escaped text: every shown byte may become "\xNN",
 * then "..." and the NUL. */
#define US_LOG_ESCAPE_CAP (US_LOG_ESCAPE_SHOWN * 4 + 4)

/* Makes the n bytes at s safe to put in a log line, so that text from clients cannot forge lines
 * or fields: control characters become \n, \r, \t or \xNN; bytes that are not valid UTF-8
 * become \xNN; backslash and quotes are escaped (\\, \', \"); Unicode line separators and
 * bidirectional controls become \uNNNN. At most US_LOG_ESCAPE_SHOWN bytes of s are shown, then
 * "...". Writes a NUL-terminated string into buf (cap bytes; US_LOG_ESCAPE_CAP always suffices,
 * a smaller buffer cuts sooner, still at a whole escape) and returns buf, for use as a "%s"
 * argument:
 *     char shown[US_LOG_ESCAPE_CAP];
 *     us_warn("user '%s': ...", us_log_escape(user, len, shown, sizeof(shown)));
 * s may be NULL when n is 0. cap must be at least 1. */
const char *us_log_escape(const char *s, size_t n, char *buf, size_t cap);

#define us_debug(...) us_log(US_LOG_DEBUG, __VA_ARGS__)
#define us_info(...) us_log(US_LOG_INFO, __VA_ARGS__)
#define us_warn(...) us_log(US_LOG_WARN, __VA_ARGS__)
#define us_error(...) us_log(US_LOG_ERROR, __VA_ARGS__)

#endif
