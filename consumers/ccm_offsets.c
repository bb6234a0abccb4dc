#include "ccm_offsets.h"

#include <stdlib.h>

#include "ccm_error.h"

int ccm_offsets_init(struct ccm_offsets *t, int cap) {
  if (t == NULL || cap < 1) return CCM_EINVAL;
  *t = (struct ccm_offsets){0};
  t->offsets = calloc((size_t)cap, sizeof *t->offsets);
  t->done = calloc((size_t)cap, sizeof *t->done);
  if (t->offsets == NULL || t->done == NULL) {
    ccm_offsets_free(t);
    return CCM_ENOMEM;
  }
  t->cap = cap;
  return CCM_OK;
}

void ccm_offsets_free(struct ccm_offsets *t) {
  if (t == NULL) return;
  free(t->offsets);
  free(t->done);
  *t = (struct ccm_offsets){0};
}

bool ccm_offsets_full(const struct ccm_offsets *t) { return t->count >= t->cap; }

int ccm_offsets_add(struct ccm_offsets *t, int64_t offset) {
  if (t->cap == 0 || ccm_offsets_full(t)) return CCM_EEXHAUSTED;
  if (t->count > 0 && offset <= t->offsets[(t->head + t->count - 1) % t->cap]) return CCM_EINVAL;
  int at = (t->head + t->count) % t->cap;
  t->offsets[at] = offset;
  t->done[at] = false;
  t->count++;
  return CCM_OK;
}

int64_t ccm_offsets_done(struct ccm_offsets *t, int64_t offset, bool done) {
  for (int i = 0; i < t->count; i++) {
    int at = (t->head + i) % t->cap;
    if (t->offsets[at] == offset) {
      t->done[at] = done;
      break;
    }
  }
  int64_t next = -1;
  while (t->count > 0 && t->done[t->head]) {
    next = t->offsets[t->head] + 1;
    t->head = (t->head + 1) % t->cap;
    t->count--;
  }
  return next;
}

void ccm_offsets_reset(struct ccm_offsets *t) {
  t->head = 0;
  t->count = 0;
}
