/* Logging to the six files of SPEC section 10 (app, error, debug, calls,
 * api, kafka) in LOG_DIR, safe across threads and across processes writing
 * the same files: each record is one write(2) under a lock, and rotation
 * (10 MiB, 10 backups) is coordinated through the same lock. */
#ifndef CCM_LOG_H
#define CCM_LOG_H

#include <stddef.h>

enum ccm_log_level { CCM_LOG_DEBUG, CCM_LOG_INFO, CCM_LOG_WARNING, CCM_LOG_ERROR };

/* Topic files besides app/error/debug; CCM_LOG_APP writes only the common ones. */
enum ccm_log_channel { CCM_LOG_APP, CCM_LOG_CALLS, CCM_LOG_API, CCM_LOG_KAFKA };

#define CCM_LOG_MAX_LINE 8192
#define CCM_LOG_ROTATE_BYTES (10u * 1024u * 1024u)
#define CCM_LOG_BACKUPS 10

/* Creates dir (and parents) and the six files, and sets the threshold level.
 * Returns CCM_OK or CCM_EIO (with errno kept); logging before a successful
 * open goes to stderr only. */
int ccm_log_open(const char *dir, int level);

/* Closes the files; later records go to stderr. */
void ccm_log_close(void);

/* Overrides the rotation size (tests use small sizes). */
void ccm_log_set_rotate_bytes(size_t bytes);

/* Writes one record; never fails visibly (a failed write is dropped). The
 * message is formatted with printf rules; newlines become spaces. */
void ccm_log_write(int channel, int level, const char *logger, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parses debug/info/warning/warn/error (any case) into *level. Returns CCM_OK
 * or CCM_EINVAL. */
int ccm_log_level_parse(const char *text, int *level);

/* Returns "DEBUG", "INFO", "WARNING" or "ERROR". */
const char *ccm_log_level_name(int level);

/* Returns the configured threshold. */
int ccm_log_level(void);

#define ccm_debug(logger, ...) ccm_log_write(CCM_LOG_APP, CCM_LOG_DEBUG, logger, __VA_ARGS__)
#define ccm_info(logger, ...) ccm_log_write(CCM_LOG_APP, CCM_LOG_INFO, logger, __VA_ARGS__)
#define ccm_warn(logger, ...) ccm_log_write(CCM_LOG_APP, CCM_LOG_WARNING, logger, __VA_ARGS__)
#define ccm_error(logger, ...) ccm_log_write(CCM_LOG_APP, CCM_LOG_ERROR, logger, __VA_ARGS__)

#endif
