/* Signal handling for long-running subcommands: SIGINT, SIGTERM and SIGHUP
 * are blocked in every thread (call ccm_signals_block before creating any)
 * and collected synchronously by the main thread. */
#ifndef CCM_SIGNALS_H
#define CCM_SIGNALS_H

/* Blocks SIGINT, SIGTERM, SIGHUP and SIGPIPE in the calling thread (threads
 * created afterwards inherit the mask). Returns CCM_OK or CCM_EINTERNAL. */
int ccm_signals_block(void);

/* Waits up to timeout_ms for SIGINT, SIGTERM or SIGHUP. Returns the signal
 * number, or 0 when none arrived in time. */
int ccm_signals_wait(int timeout_ms);

#endif
