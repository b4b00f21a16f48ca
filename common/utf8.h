/* Strict UTF-8 validation, for text that arrives as bytes (Kafka events, Redis replies) and leaves
 * as JSON, which must be valid UTF-8. */
#ifndef US_UTF8_H
#define US_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Whether s[0..len) is well-formed UTF-8 as RFC 3629 and Unicode define it: no overlong forms,
 * no UTF-16 surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence, no stray
 * continuation byte. NUL is a valid character here; callers that refuse it check it themselves. */
bool us_utf8_valid(const char *s, size_t len);

#endif
