/* Strict UTF-8 validation (see utf8.h).
 *
 * The table of well-formed byte sequences (Unicode 15, table 3-7): after the lead byte, every
 * continuation byte is 0x80..0xBF, except that the *second* byte is narrowed for four leads:
 *   E0: A0..BF (no overlong 3-byte forms)     ED: 80..9F (no surrogates)
 *   F0: 90..BF (no overlong 4-byte forms)     F4: 80..8F (nothing above U+10FFFF)
 * C0, C1 and F5..FF never appear. */
#include "utf8.h"

#include <stdint.h>

bool us_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned char b = *p;
        if (b < 0x80) {
            p++;
            continue;
        }
        size_t n;                           /* continuation bytes */
        unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (b >= 0xC2 && b <= 0xDF) {
            n = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            n = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            n = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            return false; /* stray continuation byte, C0/C1, or F5..FF */
        }
        if ((size_t)(end - p) <= n) return false; /* truncated */
        if (p[1] < lo || p[1] > hi) return false;
        for (size_t i = 2; i <= n; i++)
            if (p[i] < 0x80 || p[i] > 0xBF) return false;
        p += n + 1;
    }
    return true;
}
