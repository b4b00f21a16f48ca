/* Leveled logging to stderr, shared by the worker and the query service. */
#ifndef US_LOG_H
#define US_LOG_H

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

#define us_debug(...) us_log(US_LOG_DEBUG, __VA_ARGS__)
#define us_info(...) us_log(US_LOG_INFO, __VA_ARGS__)
#define us_warn(...) us_log(US_LOG_WARN, __VA_ARGS__)
#define us_error(...) us_log(US_LOG_ERROR, __VA_ARGS__)

#endif
