/* Small helpers shared by the unit tests. */
#ifndef US_TEST_HELPERS_H
#define US_TEST_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Decodes lowercase hex into buf ("<empty>" is zero bytes); returns the byte count, or -1 on
 * bad hex. */
static inline int hex_decode(const char *hex, unsigned char *buf, size_t cap)
{
    if (strcmp(hex, "<empty>") == 0) return 0;
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > cap) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        buf[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

/* Splits a TSV line in place into at most max fields; returns the field count. */
static inline int tsv_split(char *line, char **fields, int max)
{
    int n = 0;
    line[strcspn(line, "\r\n")] = '\0';
    char *p = line;
    while (n < max) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = '\0';
        p = tab + 1;
    }
    return n;
}

/* Opens a file under schemas/; fails the test run when it is missing. */
static inline FILE *open_schema_file(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", US_SCHEMAS_DIR, rel);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    return f;
}

#endif
