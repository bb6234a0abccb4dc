/* `ccm start-all`: runs every process of the system as a child, restarts a
 * child that dies (1 s, doubling to 30 s), and stops them all on Ctrl+C or
 * SIGTERM. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_time.h"

#define MAX_CHILDREN 8
#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
#define HEALTHY_RUN_MS 60000 /* a child that ran this long restarts quickly again */
#define STOP_GRACE_MS 15000

struct child {
  const char *command;
  pid_t pid;             /* 0 when not running */
  int64_t started_ms;    /* monotonic */
  int64_t restart_at_ms; /* monotonic; 0 = none planned */
  int64_t backoff_ms;
};

static const char logger[] = "ccm.start_all";

static pid_t spawn(struct child *c, const sigset_t *old_mask) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    /* Die with the supervisor even if it is killed with SIGKILL. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    char *argv[] = {"ccm", (char *)c->command, NULL};
    execv("/proc/self/exe", argv);
    _exit(127);
  }
  c->pid = pid;
  c->started_ms = ccm_time_mono_ms();
  c->restart_at_ms = 0;
  ccm_info(logger, "started %s (pid %d)", c->command, (int)pid);
  return pid;
}

static void on_exit_status(struct child *c, int status) {
  int64_t now = ccm_time_mono_ms();
  if (now - c->started_ms >= HEALTHY_RUN_MS) c->backoff_ms = BACKOFF_FIRST_MS;
  if (WIFSIGNALED(status)) {
    ccm_error(logger, "%s (pid %d) killed by signal %d; restarting in %lld ms", c->command,
              (int)c->pid, WTERMSIG(status), (long long)c->backoff_ms);
  } else {
    ccm_error(logger, "%s (pid %d) exited with status %d; restarting in %lld ms", c->command,
              (int)c->pid, WEXITSTATUS(status), (long long)c->backoff_ms);
  }
  c->restart_at_ms = now + c->backoff_ms;
  c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
  c->pid = 0;
}

static void reap(struct child *children, size_t n, bool stopping) {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (size_t i = 0; i < n; i++) {
      if (children[i].pid != pid) continue;
      if (stopping) {
        ccm_info(logger, "%s (pid %d) stopped", children[i].command, (int)pid);
        children[i].pid = 0;
      } else {
        on_exit_status(&children[i], status);
      }
    }
  }
}

static size_t running(const struct child *children, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < n; i++) count += children[i].pid != 0;
  return count;
}

static void stop_all(struct child *children, size_t n, const sigset_t *wait_set) {
  for (size_t i = 0; i < n; i++) {
    if (children[i].pid != 0) kill(children[i].pid, SIGTERM);
  }
  int64_t deadline = ccm_time_mono_ms() + STOP_GRACE_MS;
  while (running(children, n) > 0 && ccm_time_mono_ms() < deadline) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
    sigtimedwait(wait_set, NULL, &ts);
    reap(children, n, true);
  }
  for (size_t i = 0; i < n; i++) {
    if (children[i].pid == 0) continue;
    ccm_error(logger, "%s (pid %d) did not stop in time: killed", children[i].command,
              (int)children[i].pid);
    kill(children[i].pid, SIGKILL);
    waitpid(children[i].pid, NULL, 0);
    children[i].pid = 0;
  }
}

int ccm_cmd_start_all(int argc, char **argv) {
  bool mock = true;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--no-mock") == 0) {
      mock = false;
    } else {
      fprintf(stderr, "ccm start-all: unknown option '%s'\n", argv[i]);
      return CCM_EXIT_USAGE;
    }
  }
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "start-all");
  if (exit_code != CCM_EXIT_OK) {
    ccm_config_free(&cfg);
    return exit_code;
  }
  struct child children[MAX_CHILDREN];
  size_t n = 0;
  const char *commands[] = {"server", "gateway", "consumers", "scheduler", "mock-provider"};
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    if (strcmp(commands[i], "scheduler") == 0 && !cfg.scheduler_enabled) continue;
    if (strcmp(commands[i], "mock-provider") == 0 && !mock) continue;
    children[n++] = (struct child){.command = commands[i], .backoff_ms = BACKOFF_FIRST_MS};
  }
  ccm_config_free(&cfg);

  sigset_t wait_set, old_mask;
  sigemptyset(&wait_set);
  sigaddset(&wait_set, SIGINT);
  sigaddset(&wait_set, SIGTERM);
  sigaddset(&wait_set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &wait_set, &old_mask);

  for (size_t i = 0; i < n; i++) {
    if (spawn(&children[i], &old_mask) < 0) {
      ccm_error(logger, "cannot start %s: %s", children[i].command, strerror(errno));
      children[i].restart_at_ms = ccm_time_mono_ms() + BACKOFF_FIRST_MS;
    }
  }
  ccm_info(logger, "all processes started; Ctrl+C stops them");
  for (;;) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 250 * 1000000L};
    int sig = sigtimedwait(&wait_set, NULL, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      ccm_info(logger, "signal %d: stopping all processes", sig);
      break;
    }
    reap(children, n, false);
    int64_t now = ccm_time_mono_ms();
    for (size_t i = 0; i < n; i++) {
      struct child *c = &children[i];
      if (c->pid == 0 && c->restart_at_ms != 0 && now >= c->restart_at_ms) {
        if (spawn(c, &old_mask) < 0) c->restart_at_ms = now + c->backoff_ms;
      }
    }
  }
  stop_all(children, n, &wait_set);
  ccm_info(logger, "all processes stopped");
  sigprocmask(SIG_SETMASK, &old_mask, NULL);
  return CCM_EXIT_OK;
}
