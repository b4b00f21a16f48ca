/* Implementation of Go-compatible duration parsing. */
#include "duration.h"

#include <string.h>

#define NS_PER_MS 1000000LL

static const struct {
    const char *name;
    int64_t ns;
} units[] = {
    {"ns", 1LL},
    {"us", 1000LL},
    {"\xc2\xb5s", 1000LL}, /* U+00B5 micro sign */
    {"\xce\xbcs", 1000LL}, /* U+03BC greek mu */
    {"ms", 1000LL * 1000},
    {"s", 1000LL * 1000 * 1000},
    {"m", 60LL * 1000 * 1000 * 1000},
    {"h", 3600LL * 1000 * 1000 * 1000},
};

int us_duration_parse(const char *text, int64_t *ms)
{
    const char *p = text;
    int negative = 0;
    if (*p == '-' || *p == '+') negative = *p++ == '-';
    if (strcmp(p, "0") == 0) {
        *ms = 0;
        return 0;
    }
    if (*p == '\0') return -1;

    int64_t total_ns = 0;
    while (*p) {
        /* Integer part, then optional fraction; at least one digit overall. */
        int64_t whole = 0, frac = 0, scale = 1;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (whole > (INT64_MAX - 9) / 10) return -1;
            whole = whole * 10 + (*p++ - '0');
            digits++;
        }
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                if (scale < 1000000000000000LL) { /* Keep 15 fractional digits at most. */
                    frac = frac * 10 + (*p - '0');
                    scale *= 10;
                }
                p++;
                digits++;
            }
        }
        if (digits == 0) return -1;

        size_t best = 0;
        int64_t unit_ns = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t n = strlen(units[i].name);
            if (n > best && strncmp(p, units[i].name, n) == 0) {
                best = n;
                unit_ns = units[i].ns;
            }
        }
        if (best == 0) return -1;
        p += best;

        if (whole > INT64_MAX / unit_ns) return -1;
        int64_t part = whole * unit_ns;
        /* frac / scale < 1, so the fraction adds less than one unit; it may still overflow a
         * whole part just under the limit ("2562047.9999h", found by tests/fuzz/fuzz_config). */
        int64_t frac_ns = (int64_t)((double)frac * ((double)unit_ns / (double)scale));
        if (part > INT64_MAX - frac_ns) return -1;
        part += frac_ns;
        if (part < 0 || total_ns > INT64_MAX - part) return -1;
        total_ns += part;
    }
    *ms = (negative ? -total_ns : total_ns) / NS_PER_MS;
    return 0;
}
