#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ccm_error.h"

enum log_file { F_APP, F_ERROR, F_DEBUG, F_CALLS, F_API, F_KAFKA, F_COUNT };

static const char *const file_names[F_COUNT] = {"app.log",   "error.log", "debug.log",
                                                "calls.log", "api.log",   "kafka.log"};

static const char *const level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

#define LOG_PATH_MAX 4096

struct log_state {
  pthread_mutex_t mutex; /* threads of this process */
  int lock_fd;           /* flock(2) between processes */
  pid_t lock_pid;        /* process that opened lock_fd */
  char lock_path[LOG_PATH_MAX];
  int fds[F_COUNT];
  char paths[F_COUNT][LOG_PATH_MAX];
  int level;
  size_t rotate_bytes;
  bool open;
  bool console;
};

static struct log_state state = {
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .lock_fd = -1,
    .fds = {-1, -1, -1, -1, -1, -1},
    .level = CCM_LOG_INFO,
    .rotate_bytes = CCM_LOG_ROTATE_BYTES,
};

int ccm_log_level_parse(const char *text, int *level) {
  if (text == NULL || level == NULL) return CCM_EINVAL;
  if (strcasecmp(text, "debug") == 0)
    *level = CCM_LOG_DEBUG;
  else if (strcasecmp(text, "info") == 0)
    *level = CCM_LOG_INFO;
  else if (strcasecmp(text, "warning") == 0 || strcasecmp(text, "warn") == 0)
    *level = CCM_LOG_WARNING;
  else if (strcasecmp(text, "error") == 0)
    *level = CCM_LOG_ERROR;
  else
    return CCM_EINVAL;
  return CCM_OK;
}

const char *ccm_log_level_name(int level) {
  if (level < CCM_LOG_DEBUG || level > CCM_LOG_ERROR) return "INFO";
  return level_names[level];
}

int ccm_log_level(void) { return state.level; }

static int mkdir_p(const char *dir) {
  char buf[LOG_PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof buf) return -1;
  memcpy(buf, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char saved = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
      buf[i] = saved;
    }
  }
  return 0;
}

static int open_log(const char *path) {
  return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

void ccm_log_close(void) {
  pthread_mutex_lock(&state.mutex);
  for (int i = 0; i < F_COUNT; i++) {
    if (state.fds[i] >= 0) close(state.fds[i]);
    state.fds[i] = -1;
  }
  if (state.lock_fd >= 0) close(state.lock_fd);
  state.lock_fd = -1;
  state.open = false;
  pthread_mutex_unlock(&state.mutex);
}

int ccm_log_open(const char *dir, int level) {
  if (dir == NULL || strlen(dir) + 32 >= LOG_PATH_MAX) return CCM_EINVAL;
  ccm_log_close();
  if (mkdir_p(dir) != 0) return CCM_EIO;
  pthread_mutex_lock(&state.mutex);
  state.level = level;
  state.console = isatty(STDERR_FILENO) == 1;
  snprintf(state.lock_path, sizeof state.lock_path, "%s/.ccm-log.lock", dir);
  state.lock_fd = open(state.lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  state.lock_pid = getpid();
  int status = state.lock_fd >= 0 ? CCM_OK : CCM_EIO;
  for (int i = 0; i < F_COUNT && status == CCM_OK; i++) {
    snprintf(state.paths[i], LOG_PATH_MAX, "%s/%s", dir, file_names[i]);
    state.fds[i] = open_log(state.paths[i]);
    if (state.fds[i] < 0) status = CCM_EIO;
  }
  state.open = status == CCM_OK;
  pthread_mutex_unlock(&state.mutex);
  if (status != CCM_OK) ccm_log_close();
  return status;
}

void ccm_log_set_rotate_bytes(size_t bytes) {
  pthread_mutex_lock(&state.mutex);
  state.rotate_bytes = bytes > 0 ? bytes : CCM_LOG_ROTATE_BYTES;
  pthread_mutex_unlock(&state.mutex);
}

/* Shifts path.N to path.N+1 (dropping the oldest) and path to path.1. */
static void rotate_files(const char *path) {
  char from[LOG_PATH_MAX + 8], to[LOG_PATH_MAX + 8];
  snprintf(to, sizeof to, "%s.%d", path, CCM_LOG_BACKUPS);
  unlink(to);
  for (int i = CCM_LOG_BACKUPS - 1; i >= 1; i--) {
    snprintf(from, sizeof from, "%s.%d", path, i);
    snprintf(to, sizeof to, "%s.%d", path, i + 1);
    rename(from, to);
  }
  snprintf(to, sizeof to, "%s.1", path);
  rename(path, to);
}

/* Makes state.fds[f] refer to the current file at its path, rotating first
 * when the record would push it past the limit. Called with both locks held. */
static void prepare_file(int f, size_t len) {
  struct stat by_path, by_fd;
  bool stale = stat(state.paths[f], &by_path) != 0 || fstat(state.fds[f], &by_fd) != 0 ||
               by_path.st_ino != by_fd.st_ino || by_path.st_dev != by_fd.st_dev;
  if (stale) {
    /* Another process rotated (or someone removed the file): follow it. */
    int fd = open_log(state.paths[f]);
    if (fd < 0) return;
    close(state.fds[f]);
    state.fds[f] = fd;
    if (fstat(fd, &by_path) != 0) return;
  }
  if ((size_t)by_path.st_size + len > state.rotate_bytes && by_path.st_size > 0) {
    rotate_files(state.paths[f]);
    int fd = open_log(state.paths[f]);
    if (fd < 0) return;
    close(state.fds[f]);
    state.fds[f] = fd;
  }
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    buf += n;
    len -= (size_t)n;
  }
}

static size_t format_record(char *line, size_t cap, int level, const char *logger, const char *fmt,
                            va_list ap) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  int head =
      snprintf(line, cap, "[%s] %04d-%02d-%02d %02d:%02d:%02d.%03ld %s - ",
               ccm_log_level_name(level), tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
               tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000), logger != NULL ? logger : "ccm");
  if (head < 0) return 0;
  size_t len = (size_t)head < cap - 2 ? (size_t)head : cap - 2;
  int body = vsnprintf(line + len, cap - len - 1, fmt, ap);
  if (body > 0) len += (size_t)body < cap - len - 2 ? (size_t)body : cap - len - 2;
  for (size_t i = (size_t)head; i < len; i++) {
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  }
  line[len++] = '\n';
  line[len] = '\0';
  return len;
}

void ccm_log_write(int channel, int level, const char *logger, const char *fmt, ...) {
  if (level < state.level && level != CCM_LOG_ERROR) return;
  char line[CCM_LOG_MAX_LINE];
  va_list ap;
  va_start(ap, fmt);
  size_t len = format_record(line, sizeof line, level, logger, fmt, ap);
  va_end(ap);
  if (len == 0) return;

  bool targets[F_COUNT] = {false};
  targets[F_APP] = level >= state.level;
  targets[F_ERROR] = level >= CCM_LOG_ERROR;
  targets[F_DEBUG] = state.level == CCM_LOG_DEBUG;
  if (channel == CCM_LOG_CALLS) targets[F_CALLS] = level >= state.level;
  if (channel == CCM_LOG_API) targets[F_API] = level >= state.level;
  if (channel == CCM_LOG_KAFKA) targets[F_KAFKA] = level >= state.level;

  pthread_mutex_lock(&state.mutex);
  if (!state.open) {
    pthread_mutex_unlock(&state.mutex);
    if (targets[F_APP]) write_all(STDERR_FILENO, line, len);
    return;
  }
  if (state.lock_pid != getpid()) {
    /* A forked child shares the parent's open file description, and with it
     * the flock: it needs its own to exclude the parent. */
    int fd = open(state.lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
      close(state.lock_fd);
      state.lock_fd = fd;
      state.lock_pid = getpid();
    }
  }
  if (flock(state.lock_fd, LOCK_EX) == 0) {
    for (int f = 0; f < F_COUNT; f++) {
      if (!targets[f]) continue;
      prepare_file(f, len);
      write_all(state.fds[f], line, len);
    }
    flock(state.lock_fd, LOCK_UN);
  }
  bool console = state.console && targets[F_APP];
  pthread_mutex_unlock(&state.mutex);
  if (console) write_all(STDERR_FILENO, line, len);
}
