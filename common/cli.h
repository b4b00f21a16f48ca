/* Command-line handling shared by both programs: flags that override config keys. */
#ifndef US_CLI_H
#define US_CLI_H

#include "config.h"

/* A flag that sets a config key: "--port 8000" sets "port". */
typedef struct us_cli_flag {
    const char *name; /* Without the leading dashes. */
    const char *path; /* The config key it sets. */
    const char *help;
} us_cli_flag;

/* Parses argv: --config FILE, --check-config, --help, and the given flags (each takes a value, as
 * "--flag value" or "--flag=value"). Then loads the configuration (file, environment, flags) and
 * applies log_level. On success returns 0 and sets *check_only when --check-config was given.
 * Prints usage or the error and returns 1 (bad usage or config) or 2 (--help: exit 0). */
int us_cli_load(int argc, char **argv, char **envp, const char *program, const us_cli_flag *flags,
                size_t nflags, us_config *cfg, int *check_only);

#endif
