/* A main() for the fuzz targets when they are built without libFuzzer (-DUS_FUZZ_REPLAY): it feeds
 * every file named on the command line (or every file of a directory named there) to
 * LLVMFuzzerTestOneInput once, so that crash inputs kept in tests/fuzz/regressions/ replay through
 * any compiler's build, sanitizers or not. Exits non-zero if a path cannot be read; a regression
 * that still crashes aborts the process, which fails the ctest test. */
#ifndef US_FUZZ_REPLAY_H
#define US_FUZZ_REPLAY_H

#ifdef US_FUZZ_REPLAY
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file through the target. Returns 0, or -1 if it cannot be read. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open '%s'\n", path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) abort();
    /* An exact-size copy, so that ASan catches a read one byte past the input as libFuzzer would. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) abort();
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

int main(int argc, char **argv)
{
    int failed = 0, replayed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: no such file or directory '%s'\n", argv[i]);
            failed = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= replay_file(argv[i]) != 0;
            replayed++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue; /* ".", ".." and README-like dot files */
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
            failed |= replay_file(path) != 0;
            replayed++;
        }
        if (d) closedir(d);
    }
    printf("replayed %d input(s)%s\n", replayed, failed ? " (some unreadable)" : "");
    return failed;
}
#endif

#endif
