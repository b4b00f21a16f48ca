/* Go-style duration strings ("30s", "1h30m", "744h", "1.5s", "250ms"). */
#ifndef US_DURATION_H
#define US_DURATION_H

#include <stdint.h>

/* Parses a Go time.ParseDuration string into milliseconds (sub-millisecond parts are truncated).
 * Accepts an optional sign, decimal fractions and the units ns, us, µs, ms, s, m, h; "0" alone is
 * allowed. Returns 0 on success, -1 on malformed text or overflow (then *ms is unchanged). */
int us_duration_parse(const char *text, int64_t *ms);

#endif
