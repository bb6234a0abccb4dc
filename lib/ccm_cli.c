#include "ccm_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_commands.h"
#include "ccm_error.h"
#include "ccm_log.h"

int ccm_cli_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return 1;
  }
  return 0;
}

int ccm_cli_setup(struct ccm_config *cfg, const char *process) {
  char err[512];
  if (ccm_config_load(cfg, err, sizeof err) != CCM_OK) {
    fprintf(stderr, "ccm %s: %s\n", process, err);
    return CCM_EXIT_USAGE;
  }
  if (ccm_log_open(cfg->log_dir, cfg->log_level) != CCM_OK) {
    fprintf(stderr, "ccm %s: invalid configuration: LOG_DIR='%s' cannot be written\n", process,
            cfg->log_dir);
    return CCM_EXIT_USAGE;
  }
  return CCM_EXIT_OK;
}

static void print_usage(FILE *out) {
  fprintf(out,
          "Usage: ccm <command> [options]\n\n"
          "ccm, the campaign call manager. Commands:\n");
  for (size_t i = 0; i < ccm_commands_count; i++) {
    fprintf(out, "  %-18s %s\n", ccm_commands[i].name, ccm_commands[i].summary);
  }
  fprintf(out,
          "\nRun 'ccm <command> --help' for a command's options. Configuration comes from\n"
          "the environment and ./.env (see .env.example).\n");
}

static const struct ccm_command *find_command(const char *name) {
  for (size_t i = 0; i < ccm_commands_count; i++) {
    const struct ccm_command *c = &ccm_commands[i];
    if (strcmp(c->name, name) == 0) return c;
    for (size_t a = 0; a < CCM_COMMAND_MAX_ALIASES && c->aliases[a] != NULL; a++) {
      if (strcmp(c->aliases[a], name) == 0) return c;
    }
  }
  return NULL;
}

int ccm_cli_run(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CCM_EXIT_USAGE : CCM_EXIT_OK;
  }
  if (strcmp(argv[1], "help") == 0) {
    if (argc > 2) {
      const struct ccm_command *c = find_command(argv[2]);
      if (c != NULL) {
        fputs(c->usage, stdout);
        return CCM_EXIT_OK;
      }
      fprintf(stderr, "ccm: unknown command '%s'\n", argv[2]);
      return CCM_EXIT_USAGE;
    }
    print_usage(stdout);
    return CCM_EXIT_OK;
  }
  const struct ccm_command *c = find_command(argv[1]);
  if (c == NULL) {
    fprintf(stderr, "ccm: unknown command '%s' (try 'ccm help')\n", argv[1]);
    return CCM_EXIT_USAGE;
  }
  if (ccm_cli_wants_help(argc - 1, argv + 1)) {
    fputs(c->usage, stdout);
    return CCM_EXIT_OK;
  }
  int rc = c->run(argc - 1, argv + 1);
  ccm_log_close();
  return rc;
}
