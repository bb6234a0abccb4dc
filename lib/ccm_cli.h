/* Subcommand dispatch for the `ccm` executable and the helpers subcommands
 * share: configuration loading and log set-up. */
#ifndef CCM_CLI_H
#define CCM_CLI_H

#include "ccm_config.h"

/* Exit codes of every subcommand. */
enum {
  CCM_EXIT_OK = 0,
  CCM_EXIT_FAILURE = 1,
  CCM_EXIT_USAGE = 2 /* bad option or configuration */
};

/* Runs the subcommand named by argv[1]; returns the process exit code. */
int ccm_cli_run(int argc, char **argv);

/* Loads the configuration and opens the logs; on failure prints one line to
 * stderr and returns CCM_EXIT_USAGE (configuration) or CCM_EXIT_FAILURE. The
 * caller frees cfg with ccm_config_free even after a failure. */
int ccm_cli_setup(struct ccm_config *cfg, const char *process);

/* Returns true when argv holds -h or --help. */
int ccm_cli_wants_help(int argc, char **argv);

#endif
