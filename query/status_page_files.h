/* Files of the status page, embedded into the program at build time (query/embed_files.cmake writes
 * their definitions into the build directory). Internal to query/. */
#ifndef US_STATUS_PAGE_FILES_H
#define US_STATUS_PAGE_FILES_H

#include <stddef.h>

typedef struct us_embedded_file {
    const char *name;          /* Relative to query/status_page/, e.g. "status.js". */
    const unsigned char *data; /* len bytes, then a NUL not counted in len. */
    size_t len;
} us_embedded_file;

extern const us_embedded_file us_embedded_files[];
extern const size_t us_embedded_nfiles;

#endif
