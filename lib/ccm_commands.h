/* The table of `ccm` subcommands and their entry points. Each entry point
 * receives argv starting at the subcommand's name and returns an exit code. */
#ifndef CCM_COMMANDS_H
#define CCM_COMMANDS_H

#include <stddef.h>

#define CCM_COMMAND_MAX_ALIASES 2

struct ccm_command {
  const char *name;
  const char *aliases[CCM_COMMAND_MAX_ALIASES]; /* spellings of the original */
  int (*run)(int argc, char **argv);
  const char *summary;
  const char *usage;
};

extern const struct ccm_command ccm_commands[];
extern const size_t ccm_commands_count;

int ccm_cmd_server(int argc, char **argv);
int ccm_cmd_gateway(int argc, char **argv);
int ccm_cmd_consumers(int argc, char **argv);
int ccm_cmd_scheduler(int argc, char **argv);
int ccm_cmd_mock_provider(int argc, char **argv);
int ccm_cmd_start_all(int argc, char **argv);
int ccm_cmd_migrate(int argc, char **argv);
int ccm_cmd_showmigrations(int argc, char **argv);
int ccm_cmd_check(int argc, char **argv);
int ccm_cmd_generate_metrics(int argc, char **argv);
int ccm_cmd_cleanup_dlq(int argc, char **argv);
int ccm_cmd_kafka_tail(int argc, char **argv);

#endif
