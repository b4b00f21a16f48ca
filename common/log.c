/* Implementation of leveled logging: one line per message, written with one write(2). */
#include "log.h"

#include <stdarg.h>
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
