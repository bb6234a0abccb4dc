#include "ccm_signals.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "ccm_error.h"

static void waited_set(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGHUP);
}

int ccm_signals_block(void) {
  sigset_t set;
  waited_set(&set);
  sigaddset(&set, SIGPIPE); /* broken sockets are errors, not deaths */
  return pthread_sigmask(SIG_BLOCK, &set, NULL) == 0 ? CCM_OK : CCM_EINTERNAL;
}

int ccm_signals_wait(int timeout_ms) {
  sigset_t set;
  waited_set(&set);
  struct timespec ts = {.tv_sec = timeout_ms / 1000,
                        .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
  int sig = sigtimedwait(&set, NULL, &ts);
  if (sig < 0) return 0; /* EAGAIN (timeout) or EINTR */
  return sig;
}
