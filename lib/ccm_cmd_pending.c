/* Subcommands whose implementation has not landed yet: they say so plainly
 * and fail, rather than pretending to run. */
#include <stdio.h>

#include "ccm_cli.h"
#include "ccm_commands.h"

static int not_available(const char *name) {
  fprintf(stderr, "ccm %s: not available in this version yet\n", name);
  return CCM_EXIT_UNAVAILABLE;
}

int ccm_cmd_scheduler(int argc, char **argv) {
  (void)argc;
  return not_available(argv[0]);
}
int ccm_cmd_generate_metrics(int argc, char **argv) {
  (void)argc;
  return not_available(argv[0]);
}
