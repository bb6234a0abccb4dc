/* Unit tests for lib/ccm_log (SPEC 10): the six files, the line format,
 * routing by level and channel, one line per record, rotation (size limit,
 * 10 backups) and several processes writing the same files without lost or
 * interleaved lines. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ccm_error.h"
#include "ccm_log.h"

static const char *const six_files[] = {"app.log",   "error.log", "debug.log",
                                        "calls.log", "api.log",   "kafka.log"};

#define LINE_RE                                                                     \
  "^\\[(DEBUG|INFO|WARNING|ERROR)\\] [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:" \
  "[0-9]{2}\\.[0-9]{3} ([^ ]+) - (.*)$"

static regex_t line_re;

struct fixture {
  char dir[64];
};

/* --------------------------------------------------------------- helpers --- */

static void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  struct dirent *e;
  char path[512];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
      rm_rf(path);
    } else {
      unlink(path);
    }
  }
  closedir(d);
  rmdir(dir);
}

static int setup(void **state) {
  struct fixture *fx = calloc(1, sizeof *fx);
  if (fx == NULL) return -1;
  snprintf(fx->dir, sizeof fx->dir, "/tmp/ccm-test-log-XXXXXX");
  if (mkdtemp(fx->dir) == NULL) {
    free(fx);
    return -1;
  }
  ccm_log_set_rotate_bytes(0); /* the default */
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  struct fixture *fx = *state;
  ccm_log_close();
  ccm_log_set_rotate_bytes(0);
  rm_rf(fx->dir);
  free(fx);
  return 0;
}

static void path_of(char *out, size_t n, const char *dir, const char *file) {
  snprintf(out, n, "%s/%s", dir, file);
}

/* Reads a whole file (NULL when missing); *len gets its size. */
static char *slurp(const char *dir, const char *file, size_t *len) {
  char path[512];
  path_of(path, sizeof path, dir, file);
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap + 1);
  assert_non_null(buf);
  size_t r;
  while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      assert_non_null(buf);
    }
  }
  fclose(f);
  buf[n] = '\0';
  if (len != NULL) *len = n;
  return buf;
}

static bool exists(const char *dir, const char *file) {
  char path[512];
  path_of(path, sizeof path, dir, file);
  struct stat st;
  return stat(path, &st) == 0;
}

static off_t size_of(const char *dir, const char *file) {
  char path[512];
  path_of(path, sizeof path, dir, file);
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  return st.st_size;
}

/* Calls fn(line, arg) for every line of text (without its '\n'); fails the
 * test when the text does not end with a newline. Returns the line count. */
static int for_each_line(char *text, size_t len, void (*fn)(const char *, void *), void *arg) {
  int count = 0;
  if (len == 0) return 0;
  if (text[len - 1] != '\n') fail_msg("file does not end with a newline");
  char *p = text;
  char *end = text + len;
  while (p < end) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    assert_non_null(nl);
    *nl = '\0';
    if (fn != NULL) fn(p, arg);
    count++;
    p = nl + 1;
  }
  return count;
}

static void check_format(const char *line, void *arg) {
  (void)arg;
  if (strlen(line) >= CCM_LOG_MAX_LINE) fail_msg("line longer than CCM_LOG_MAX_LINE");
  if (regexec(&line_re, line, 0, NULL, 0) != 0) fail_msg("malformed line: \"%.200s\"", line);
  if (memchr(line, '\r', strlen(line)) != NULL) fail_msg("carriage return in a line");
}

/* Lines of one file, each checked against the format. */
struct lines {
  char *text;
  char **line;
  int count;
};

static void collect(const char *line, void *arg) {
  struct lines *l = arg;
  l->line = realloc(l->line, sizeof *l->line * (size_t)(l->count + 1));
  assert_non_null(l->line);
  l->line[l->count++] = (char *)line;
}

static struct lines read_lines(const char *dir, const char *file) {
  struct lines l = {0};
  size_t len = 0;
  l.text = slurp(dir, file, &len);
  if (l.text == NULL) fail_msg("%s is missing", file);
  for_each_line(l.text, len, collect, &l);
  for (int i = 0; i < l.count; i++) check_format(l.line[i], NULL);
  return l;
}

static void free_lines(struct lines *l) {
  free(l->text);
  free(l->line);
  memset(l, 0, sizeof *l);
}

/* Splits a line into level, logger and message (pointers into buffers). */
static void parse_line(const char *line, char *level, char *logger, char *msg, size_t msglen) {
  regmatch_t m[4];
  if (regexec(&line_re, line, 4, m, 0) != 0) fail_msg("malformed line: \"%.200s\"", line);
  snprintf(level, 16, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
  snprintf(logger, 128, "%.*s", (int)(m[2].rm_eo - m[2].rm_so), line + m[2].rm_so);
  snprintf(msg, msglen, "%.*s", (int)(m[3].rm_eo - m[3].rm_so), line + m[3].rm_so);
}

/* True when some line of the file has exactly this level, logger and message. */
static bool has_record(const struct lines *l, const char *level, const char *logger,
                       const char *msg) {
  for (int i = 0; i < l->count; i++) {
    char lv[16], lg[128], m[CCM_LOG_MAX_LINE];
    parse_line(l->line[i], lv, lg, m, sizeof m);
    if (strcmp(lv, level) == 0 && strcmp(lg, logger) == 0 && strcmp(m, msg) == 0) return true;
  }
  return false;
}

/* ------------------------------------------------------------------ tests --- */

static void test_open_creates_six_files(void **state) {
  struct fixture *fx = *state;
  /* Nested directories are created too. */
  char dir[256];
  snprintf(dir, sizeof dir, "%s/a/b/logs", fx->dir);
  assert_int_equal(ccm_log_open(dir, CCM_LOG_INFO), CCM_OK);
  for (size_t i = 0; i < 6; i++) {
    assert_true(exists(dir, six_files[i]));
    assert_int_equal(size_of(dir, six_files[i]), 0);
  }
  assert_int_equal(ccm_log_level(), CCM_LOG_INFO);
  ccm_log_close();
  /* Opening again appends, it does not truncate. */
  assert_int_equal(ccm_log_open(dir, CCM_LOG_INFO), CCM_OK);
  ccm_info("t.open", "first");
  ccm_log_close();
  assert_int_equal(ccm_log_open(dir, CCM_LOG_INFO), CCM_OK);
  ccm_info("t.open", "second");
  ccm_log_close();
  struct lines l = read_lines(dir, "app.log");
  assert_int_equal(l.count, 2);
  free_lines(&l);
  /* A directory that cannot be created is an error. */
  char bad[300];
  snprintf(bad, sizeof bad, "%s/app.log/sub", dir);
  assert_int_not_equal(ccm_log_open(bad, CCM_LOG_INFO), CCM_OK);
  assert_int_not_equal(ccm_log_open(NULL, CCM_LOG_INFO), CCM_OK);
  assert_int_not_equal(ccm_log_open("", CCM_LOG_INFO), CCM_OK);
}

static void test_line_format(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_DEBUG), CCM_OK);
  time_t before = time(NULL);
  ccm_info("calls.scheduler", "Retrying call %s (attempt %d)", "call_1_+1234567890", 2);
  ccm_debug("ccm.debug", "dbg %d", 1);
  ccm_warn("ccm.warn", "careful");
  ccm_error("ccm.err", "broken: %s", "x");
  ccm_log_write(CCM_LOG_APP, CCM_LOG_INFO, NULL, "no logger");
  time_t after = time(NULL);
  ccm_log_close();

  struct lines l = read_lines(fx->dir, "app.log");
  assert_int_equal(l.count, 5);
  assert_true(
      has_record(&l, "INFO", "calls.scheduler", "Retrying call call_1_+1234567890 (attempt 2)"));
  assert_true(has_record(&l, "DEBUG", "ccm.debug", "dbg 1"));
  assert_true(has_record(&l, "WARNING", "ccm.warn", "careful"));
  assert_true(has_record(&l, "ERROR", "ccm.err", "broken: x"));
  /* Exact shape of the first line, timestamp in UTC. */
  const char *line = l.line[0];
  assert_memory_equal(line, "[INFO] ", 7);
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  int ms = -1;
  assert_int_equal(sscanf(line + 7, "%4d-%2d-%2d %2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon,
                          &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
                   7);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  time_t stamp = timegm(&tm);
  assert_true(stamp >= before - 1 && stamp <= after + 1);
  assert_true(ms >= 0 && ms <= 999);
  assert_string_equal(line + 7 + 23,
                      " calls.scheduler - Retrying call call_1_+1234567890 (attempt 2)");
  free_lines(&l);
}

static void test_routing_info(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  ccm_debug("r", "app-debug");
  ccm_info("r", "app-info");
  ccm_warn("r", "app-warning");
  ccm_error("r", "app-error");
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.x", "calls-info");
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_DEBUG, "calls.x", "calls-debug");
  ccm_log_write(CCM_LOG_API, CCM_LOG_INFO, "api.x", "Incoming Request: GET /health/ 200 1ms");
  ccm_log_write(CCM_LOG_API, CCM_LOG_ERROR, "api.x", "api-error");
  ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.x", "Processing initiate call_1");
  ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_DEBUG, "kafka.x", "kafka-debug");
  ccm_log_close();

  struct lines app = read_lines(fx->dir, "app.log");
  assert_int_equal(app.count, 7);
  assert_false(has_record(&app, "DEBUG", "r", "app-debug"));
  assert_true(has_record(&app, "INFO", "r", "app-info"));
  assert_true(has_record(&app, "WARNING", "r", "app-warning"));
  assert_true(has_record(&app, "ERROR", "r", "app-error"));
  assert_true(has_record(&app, "INFO", "calls.x", "calls-info"));
  assert_true(has_record(&app, "INFO", "api.x", "Incoming Request: GET /health/ 200 1ms"));
  assert_true(has_record(&app, "ERROR", "api.x", "api-error"));
  assert_true(has_record(&app, "WARNING", "kafka.x", "Processing initiate call_1"));
  free_lines(&app);

  struct lines err = read_lines(fx->dir, "error.log");
  assert_int_equal(err.count, 2);
  assert_true(has_record(&err, "ERROR", "r", "app-error"));
  assert_true(has_record(&err, "ERROR", "api.x", "api-error"));
  free_lines(&err);

  assert_int_equal(size_of(fx->dir, "debug.log"), 0);

  struct lines calls = read_lines(fx->dir, "calls.log");
  assert_int_equal(calls.count, 1);
  assert_true(has_record(&calls, "INFO", "calls.x", "calls-info"));
  free_lines(&calls);

  struct lines api = read_lines(fx->dir, "api.log");
  assert_int_equal(api.count, 2);
  assert_true(has_record(&api, "INFO", "api.x", "Incoming Request: GET /health/ 200 1ms"));
  assert_true(has_record(&api, "ERROR", "api.x", "api-error"));
  free_lines(&api);

  struct lines kafka = read_lines(fx->dir, "kafka.log");
  assert_int_equal(kafka.count, 1);
  assert_true(has_record(&kafka, "WARNING", "kafka.x", "Processing initiate call_1"));
  free_lines(&kafka);
}

static void test_routing_debug(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_DEBUG), CCM_OK);
  assert_int_equal(ccm_log_level(), CCM_LOG_DEBUG);
  ccm_debug("d", "app-debug");
  ccm_info("d", "app-info");
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_DEBUG, "calls.d", "calls-debug");
  ccm_log_close();

  struct lines app = read_lines(fx->dir, "app.log");
  assert_int_equal(app.count, 3);
  assert_true(has_record(&app, "DEBUG", "d", "app-debug"));
  free_lines(&app);
  struct lines dbg = read_lines(fx->dir, "debug.log");
  assert_true(dbg.count >= 2);
  assert_true(has_record(&dbg, "DEBUG", "d", "app-debug"));
  assert_true(has_record(&dbg, "DEBUG", "calls.d", "calls-debug"));
  free_lines(&dbg);
  struct lines calls = read_lines(fx->dir, "calls.log");
  assert_int_equal(calls.count, 1);
  assert_true(has_record(&calls, "DEBUG", "calls.d", "calls-debug"));
  free_lines(&calls);
  assert_int_equal(size_of(fx->dir, "error.log"), 0);
}

static void test_routing_error_level(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_ERROR), CCM_OK);
  ccm_info("e", "dropped-info");
  ccm_warn("e", "dropped-warning");
  ccm_error("e", "kept-error");
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_WARNING, "calls.e", "dropped-calls");
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_ERROR, "calls.e", "kept-calls");
  ccm_log_close();
  struct lines app = read_lines(fx->dir, "app.log");
  assert_int_equal(app.count, 2);
  assert_true(has_record(&app, "ERROR", "e", "kept-error"));
  assert_true(has_record(&app, "ERROR", "calls.e", "kept-calls"));
  free_lines(&app);
  struct lines err = read_lines(fx->dir, "error.log");
  assert_int_equal(err.count, 2);
  free_lines(&err);
  struct lines calls = read_lines(fx->dir, "calls.log");
  assert_int_equal(calls.count, 1);
  free_lines(&calls);
  assert_int_equal(size_of(fx->dir, "debug.log"), 0);
  assert_int_equal(size_of(fx->dir, "api.log"), 0);
  assert_int_equal(size_of(fx->dir, "kafka.log"), 0);
}

static void test_newlines_become_spaces(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  ccm_info("nl", "line1\nline2\r\nline3\n");
  ccm_info("nl", "%s", "injected\n[ERROR] 2025-01-01 00:00:00.000 fake - forged");
  ccm_log_close();
  struct lines app = read_lines(fx->dir, "app.log");
  assert_int_equal(app.count, 2);
  assert_true(has_record(&app, "INFO", "nl", "line1 line2  line3 "));
  assert_true(
      has_record(&app, "INFO", "nl", "injected [ERROR] 2025-01-01 00:00:00.000 fake - forged"));
  free_lines(&app);
}

static void test_long_message_truncated(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  size_t n = 3 * CCM_LOG_MAX_LINE;
  char *big = malloc(n + 1);
  assert_non_null(big);
  memset(big, 'x', n);
  big[n] = '\0';
  ccm_info("long", "%s", big);
  for (size_t i = 0; i < n; i += 100) big[i] = '\n'; /* newlines inside too */
  ccm_error("long", "%s", big);
  ccm_info("long", "after");
  free(big);
  ccm_log_close();
  struct lines app = read_lines(fx->dir, "app.log");
  assert_int_equal(app.count, 3);
  for (int i = 0; i < 2; i++) {
    size_t len = strlen(app.line[i]);
    assert_true(len > CCM_LOG_MAX_LINE / 2);
    assert_true(len < CCM_LOG_MAX_LINE); /* plus its '\n' */
  }
  assert_true(has_record(&app, "INFO", "long", "after"));
  free_lines(&app);
  struct lines err = read_lines(fx->dir, "error.log");
  assert_int_equal(err.count, 1);
  free_lines(&err);
}

static void test_level_parse_and_name(void **state) {
  (void)state;
  int level = -1;
  assert_int_equal(ccm_log_level_parse("debug", &level), CCM_OK);
  assert_int_equal(level, CCM_LOG_DEBUG);
  assert_int_equal(ccm_log_level_parse("INFO", &level), CCM_OK);
  assert_int_equal(level, CCM_LOG_INFO);
  assert_int_equal(ccm_log_level_parse("Warning", &level), CCM_OK);
  assert_int_equal(level, CCM_LOG_WARNING);
  assert_int_equal(ccm_log_level_parse("warn", &level), CCM_OK);
  assert_int_equal(level, CCM_LOG_WARNING);
  assert_int_equal(ccm_log_level_parse("ERROR", &level), CCM_OK);
  assert_int_equal(level, CCM_LOG_ERROR);
  level = 77;
  assert_int_equal(ccm_log_level_parse("verbose", &level), CCM_EINVAL);
  assert_int_equal(ccm_log_level_parse("", &level), CCM_EINVAL);
  assert_int_equal(ccm_log_level_parse(NULL, &level), CCM_EINVAL);
  assert_int_equal(ccm_log_level_parse("info", NULL), CCM_EINVAL);
  assert_int_equal(level, 77);
  assert_string_equal(ccm_log_level_name(CCM_LOG_DEBUG), "DEBUG");
  assert_string_equal(ccm_log_level_name(CCM_LOG_INFO), "INFO");
  assert_string_equal(ccm_log_level_name(CCM_LOG_WARNING), "WARNING");
  assert_string_equal(ccm_log_level_name(CCM_LOG_ERROR), "ERROR");
  assert_non_null(ccm_log_level_name(-1));
  assert_non_null(ccm_log_level_name(99));
}

/* Before open and after close, records go to stderr, not to the files. */
static void test_closed_goes_to_stderr(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  ccm_log_close();
  char errpath[128];
  snprintf(errpath, sizeof errpath, "%s/stderr.txt", fx->dir);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(saved >= 0 && fd >= 0);
  dup2(fd, STDERR_FILENO);
  close(fd);
  ccm_info("closed", "to stderr");
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  assert_int_equal(size_of(fx->dir, "app.log"), 0);
  struct lines l = read_lines(fx->dir, "stderr.txt");
  assert_int_equal(l.count, 1);
  assert_true(has_record(&l, "INFO", "closed", "to stderr"));
  free_lines(&l);
}

/* Writes records "seq=<n>" with padding until n reaches count. */
static void write_numbered(int channel, const char *logger, const char *tag, int count) {
  for (int i = 0; i < count; i++) {
    ccm_log_write(channel, CCM_LOG_INFO, logger, "%s seq=%d pad=%s", tag, i,
                  "................................");
  }
}

static void test_rotation(void **state) {
  struct fixture *fx = *state;
  const size_t limit = 4096;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  ccm_log_set_rotate_bytes(limit);
  /* ~100-byte lines: 1000 of them fill ~24 files of 4 KiB. */
  write_numbered(CCM_LOG_CALLS, "rot", "rotation", 1000);
  ccm_log_close();
  static const char *const names[] = {"app.log", "calls.log"};
  for (size_t k = 0; k < 2; k++) {
    char name[64];
    for (int i = 1; i <= CCM_LOG_BACKUPS; i++) {
      snprintf(name, sizeof name, "%s.%d", names[k], i);
      if (!exists(fx->dir, name)) fail_msg("%s is missing", name);
      assert_true(size_of(fx->dir, name) <= (off_t)limit);
      assert_true(size_of(fx->dir, name) > (off_t)limit / 2);
    }
    snprintf(name, sizeof name, "%s.%d", names[k], CCM_LOG_BACKUPS + 1);
    assert_false(exists(fx->dir, name));
    assert_true(size_of(fx->dir, names[k]) <= (off_t)limit);
    assert_true(size_of(fx->dir, names[k]) > 0);
    /* Oldest to newest, the kept lines are consecutive and end with the last. */
    int expect = -1;
    for (int i = CCM_LOG_BACKUPS; i >= 0; i--) {
      if (i > 0) {
        snprintf(name, sizeof name, "%s.%d", names[k], i);
      } else {
        snprintf(name, sizeof name, "%s", names[k]);
      }
      struct lines l = read_lines(fx->dir, name);
      for (int j = 0; j < l.count; j++) {
        int seq = -1;
        const char *s = strstr(l.line[j], "seq=");
        assert_non_null(s);
        assert_int_equal(sscanf(s, "seq=%d", &seq), 1);
        if (expect >= 0 && seq != expect) fail_msg("%s: seq %d, expected %d", name, seq, expect);
        expect = seq + 1;
      }
      free_lines(&l);
    }
    assert_int_equal(expect, 1000);
  }
  /* Files with nothing written do not rotate. */
  assert_false(exists(fx->dir, "error.log.1"));
  assert_false(exists(fx->dir, "api.log.1"));
  assert_int_equal(size_of(fx->dir, "error.log"), 0);
}

/* ------------------------------------------------------- multi-process --- */

enum { MP_CHILDREN = 4, MP_LINES = 2000 };
#define MP_ROTATE ((size_t)64 * 1024)

/* Counts "child=<c> seq=<n>" in app.log and its backups; every one must be
 * there exactly once, every line well-formed, every file within the limit. */
static void check_multi_process(const char *dir, int writers) {
  int *seen = calloc((size_t)writers * MP_LINES, sizeof *seen);
  assert_non_null(seen);
  long long total_bytes = 0;
  int total_lines = 0, oversized = 0, malformed = 0;
  char problems[1024] = "";
  for (int i = CCM_LOG_BACKUPS + 1; i >= 0; i--) {
    char name[64];
    if (i > 0) {
      snprintf(name, sizeof name, "app.log.%d", i);
    } else {
      snprintf(name, sizeof name, "app.log");
    }
    if (!exists(dir, name)) continue;
    if (i == CCM_LOG_BACKUPS + 1) {
      snprintf(problems + strlen(problems), sizeof problems - strlen(problems),
               " %s exists (more than %d backups);", name, CCM_LOG_BACKUPS);
    }
    off_t size = size_of(dir, name);
    if (size > (off_t)MP_ROTATE) {
      oversized++;
      snprintf(problems + strlen(problems), sizeof problems - strlen(problems),
               " %s is %lld bytes (limit %zu);", name, (long long)size, MP_ROTATE);
    }
    total_bytes += size;
    size_t len = 0;
    char *text = slurp(dir, name, &len);
    assert_non_null(text);
    if (len > 0 && text[len - 1] != '\n') malformed++;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
      int c = -1, n = -1;
      const char *p = strstr(line, "child=");
      if (regexec(&line_re, line, 0, NULL, 0) != 0 || p == NULL ||
          sscanf(p, "child=%d seq=%d", &c, &n) != 2 || c < 0 || c >= writers || n < 0 ||
          n >= MP_LINES) {
        if (malformed++ == 0) {
          snprintf(problems + strlen(problems), sizeof problems - strlen(problems),
                   " malformed line in %s: \"%.80s\";", name, line);
        }
        continue;
      }
      seen[c * MP_LINES + n]++;
      total_lines++;
    }
    free(text);
  }
  int missing = 0, duplicated = 0;
  for (int i = 0; i < writers * MP_LINES; i++) {
    if (seen[i] == 0) missing++;
    if (seen[i] > 1) duplicated++;
  }
  free(seen);
  if (problems[0] != '\0' || missing != 0 || duplicated != 0 || malformed != 0) {
    fail_msg(
        "%d of %d lines missing, %d duplicated, %d malformed, %d files over the limit "
        "(%d lines, %lld bytes found):%s",
        missing, writers * MP_LINES, duplicated, malformed, oversized, total_lines, total_bytes,
        problems);
  }
  /* The test is sized so that nothing may be dropped by rotation. */
  assert_true(total_bytes < (long long)(CCM_LOG_BACKUPS + 1) * (long long)MP_ROTATE);
  assert_int_equal(total_lines, writers * MP_LINES);
}

static void mp_write(int c) {
  for (int n = 0; n < MP_LINES; n++) {
    ccm_log_write(CCM_LOG_APP, CCM_LOG_INFO, "mp", "child=%d seq=%d", c, n);
  }
}

/* Forks the writers; each calls ccm_log_open itself when reopen is set
 * (independent processes, as separate executables would), otherwise they
 * inherit the parent's open log (a fork without exec). The parent writes
 * as writer number MP_CHILDREN at the same time. */
static void run_multi_process(const char *dir, bool reopen) {
  assert_int_equal(ccm_log_open(dir, CCM_LOG_INFO), CCM_OK);
  ccm_log_set_rotate_bytes(MP_ROTATE);
  int go[2];
  assert_int_equal(pipe(go), 0);
  pid_t pids[MP_CHILDREN];
  fflush(NULL);
  for (int c = 0; c < MP_CHILDREN; c++) {
    pids[c] = fork();
    assert_true(pids[c] >= 0);
    if (pids[c] == 0) {
      close(go[1]);
      if (reopen && ccm_log_open(dir, CCM_LOG_INFO) != CCM_OK) _exit(3);
      char b;
      if (read(go[0], &b, 1) < 0) _exit(4); /* wait for the start signal */
      mp_write(c);
      ccm_log_close();
      _exit(0);
    }
  }
  close(go[0]);
  close(go[1]); /* EOF: everyone starts */
  mp_write(MP_CHILDREN);
  for (int c = 0; c < MP_CHILDREN; c++) {
    int st = 0;
    assert_int_equal(waitpid(pids[c], &st, 0), pids[c]);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
  }
  ccm_log_close();
  check_multi_process(dir, MP_CHILDREN + 1);
}

static void test_multi_process_independent(void **state) {
  struct fixture *fx = *state;
  run_multi_process(fx->dir, true);
}

/* Regression (fixed): lib/ccm_log.c: the inter-process lock is flock(2) on state.lock_fd
 * (line 216), opened once in ccm_log_open (line 105). flock locks belong to
 * the open file description, which a forked child shares with its parent, so
 * after a fork without a new ccm_log_open the parent's and the children's
 * LOCK_EX do not exclude each other: two processes check the size
 * (prepare_file, line 152) and write/rotate at the same time. Observed on
 * every run: several of app.log.1..10 end up over the rotation size (e.g.
 * 65646 bytes with a 65536 limit); racing rotate_files() renames can also
 * overwrite a backup. Expected: every file <= limit and every line exactly
 * once, as with independent processes (the lock must be re-created in the
 * child, e.g. via pthread_atfork or a getpid() check, or use a per-process
 * fcntl lock). */
static void test_multi_process_inherited(void **state) {
  struct fixture *fx = *state;
  run_multi_process(fx->dir, false);
}

/* Threads of one process share the files safely too (checked in the same
 * way, the writer number standing for the thread). */
static void *thread_writer(void *arg) {
  mp_write((int)(intptr_t)arg);
  return NULL;
}

static void test_multi_thread(void **state) {
  struct fixture *fx = *state;
  assert_int_equal(ccm_log_open(fx->dir, CCM_LOG_INFO), CCM_OK);
  ccm_log_set_rotate_bytes(MP_ROTATE);
  pthread_t t[MP_CHILDREN];
  for (int i = 0; i < MP_CHILDREN; i++) {
    assert_int_equal(pthread_create(&t[i], NULL, thread_writer, (void *)(intptr_t)i), 0);
  }
  mp_write(MP_CHILDREN);
  for (int i = 0; i < MP_CHILDREN; i++) pthread_join(t[i], NULL);
  ccm_log_close();
  check_multi_process(fx->dir, MP_CHILDREN + 1);
}

static int group_setup(void **state) {
  (void)state;
  return regcomp(&line_re, LINE_RE, REG_EXTENDED) == 0 ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  regfree(&line_re);
  return 0;
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_open_creates_six_files),
      T(test_line_format),
      T(test_routing_info),
      T(test_routing_debug),
      T(test_routing_error_level),
      T(test_newlines_become_spaces),
      T(test_long_message_truncated),
      T(test_level_parse_and_name),
      T(test_closed_goes_to_stderr),
      T(test_rotation),
      T(test_multi_thread),
      T(test_multi_process_independent),
      T(test_multi_process_inherited),
  };
#undef T
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
