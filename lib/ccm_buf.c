#include "ccm_buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"

void ccm_buf_init(struct ccm_buf *b, size_t max) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->max = max;
}

void ccm_buf_free(struct ccm_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void ccm_buf_reset(struct ccm_buf *b) {
  b->len = 0;
  if (b->data != NULL) b->data[0] = '\0';
}

static int reserve(struct ccm_buf *b, size_t extra) {
  if (extra > b->max || b->len > b->max - extra) return CCM_ETOOLARGE;
  if (b->len + extra == SIZE_MAX) return CCM_ETOOLARGE; /* no room for the NUL */
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return CCM_OK;
  size_t cap = b->cap > 0 ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  if (b->max < SIZE_MAX && cap > b->max + 1) cap = b->max + 1;
  char *p = realloc(b->data, cap);
  if (p == NULL) return CCM_ENOMEM;
  b->data = p;
  b->cap = cap;
  return CCM_OK;
}

int ccm_buf_append(struct ccm_buf *b, const void *data, size_t len) {
  int rc = reserve(b, len);
  if (rc != CCM_OK) return rc;
  if (len > 0) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return CCM_OK;
}

int ccm_buf_append_str(struct ccm_buf *b, const char *s) { return ccm_buf_append(b, s, strlen(s)); }

int ccm_buf_printf(struct ccm_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return CCM_EINVAL;
  int rc = reserve(b, (size_t)n);
  if (rc != CCM_OK) return rc;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return CCM_OK;
}

char *ccm_buf_take(struct ccm_buf *b, size_t *len) {
  char *p = b->data;
  if (len != NULL) *len = b->len;
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  return p;
}
