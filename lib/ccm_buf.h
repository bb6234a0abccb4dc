/* A growable byte buffer with a hard maximum size, always NUL-terminated so
 * that text can be used as a C string. Ownership of the bytes leaves the
 * buffer only through ccm_buf_take. */
#ifndef CCM_BUF_H
#define CCM_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct ccm_buf {
  char *data;
  size_t len;
  size_t cap;
  size_t max; /* hard limit on len */
};

/* Prepares an empty buffer that will never hold more than max bytes. */
void ccm_buf_init(struct ccm_buf *b, size_t max);
/* Releases the bytes; the buffer is empty and reusable afterwards. */
void ccm_buf_free(struct ccm_buf *b);
/* Empties the buffer, keeping its allocation. */
void ccm_buf_reset(struct ccm_buf *b);
/* Appends len bytes. Returns CCM_OK, CCM_ETOOLARGE past the maximum or
 * CCM_ENOMEM; on error the buffer is unchanged. */
int ccm_buf_append(struct ccm_buf *b, const void *data, size_t len);
/* Appends a C string; errors as ccm_buf_append. */
int ccm_buf_append_str(struct ccm_buf *b, const char *s);
/* Appends printf-formatted text; errors as ccm_buf_append. */
int ccm_buf_printf(struct ccm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the bytes (NUL-terminated, possibly NULL when empty) to the caller,
 * who frees them with free(); the buffer is left empty. */
char *ccm_buf_take(struct ccm_buf *b, size_t *len);

#endif
