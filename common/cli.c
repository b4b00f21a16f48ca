/* Implementation of the shared command line. */
#include "cli.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OVERRIDES 32

static void usage(const char *program, const us_cli_flag *flags, size_t nflags)
{
    fprintf(stderr,
            "usage: %s --config FILE [flags]\n"
            "  --config FILE     JSON configuration (see docs/choices.md for every key)\n"
            "  --check-config    validate the configuration and exit\n"
            "  --help            this text\n",
            program);
    for (size_t i = 0; i < nflags; i++)
        fprintf(stderr, "  --%-16s %s (config key '%s')\n", flags[i].name, flags[i].help,
                flags[i].path);
    fprintf(stderr, "Every config key can also be set with USERSTATUS_<KEY_PATH>, e.g. "
                    "USERSTATUS_USER_STATUS_REDIS_ADDRESS.\n");
}

int us_cli_load(int argc, char **argv, char **envp, const char *program, const us_cli_flag *flags,
                size_t nflags, us_config *cfg, int *check_only)
{
    const char *config_path = NULL;
    us_config_override overrides[MAX_OVERRIDES];
    size_t noverrides = 0;
    *check_only = 0;
    memset(cfg, 0, sizeof(*cfg));

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(program, flags, nflags);
            return 2;
        }
        if (strcmp(arg, "--check-config") == 0) {
            *check_only = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s'\n", program, arg);
            usage(program, flags, nflags);
            return 1;
        }
        const char *name = arg + 2, *eq = strchr(name, '='), *value;
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, "%s: flag '%s' needs a value\n", program, arg);
            return 1;
        }
        if (nlen == 6 && strncmp(name, "config", 6) == 0) {
            config_path = value;
            continue;
        }
        const us_cli_flag *f = NULL;
        for (size_t k = 0; k < nflags; k++)
            if (strlen(flags[k].name) == nlen && strncmp(flags[k].name, name, nlen) == 0)
                f = &flags[k];
        if (!f) {
            fprintf(stderr, "%s: unknown flag '--%.*s'\n", program, (int)nlen, name);
            usage(program, flags, nflags);
            return 1;
        }
        if (noverrides == MAX_OVERRIDES) {
            fprintf(stderr, "%s: too many flags\n", program);
            return 1;
        }
        overrides[noverrides].path = f->path;
        overrides[noverrides++].value = value;
    }

    char err[512];
    if (us_config_load(cfg, config_path, envp, overrides, noverrides, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: configuration error: %s\n", program, err);
        return 1;
    }
    us_log_level level;
    if (us_log_level_parse(cfg->log_level, &level) == 0) us_log_set_level(level);
    return 0;
}
