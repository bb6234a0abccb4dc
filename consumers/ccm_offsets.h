/* Which offset of one partition may be committed while its messages are
 * handled out of order by several threads: offsets are added in the order
 * they were fetched, marked done in any order, and the commit point only
 * moves past a message once it and every earlier one are done, so a crash
 * redelivers and never skips. The tracker holds at most `cap` offsets. */
#ifndef CCM_OFFSETS_H
#define CCM_OFFSETS_H

#include <stdbool.h>
#include <stdint.h>

struct ccm_offsets {
  int64_t *offsets; /* ring of cap entries, oldest at head */
  bool *done;
  int head, count, cap;
};

/* Prepares an empty tracker for up to cap offsets. Returns CCM_OK,
 * CCM_EINVAL for cap < 1, or CCM_ENOMEM. Release with ccm_offsets_free. */
int ccm_offsets_init(struct ccm_offsets *t, int cap);

/* Releases the tracker's memory; t may be zeroed or NULL. */
void ccm_offsets_free(struct ccm_offsets *t);

/* Returns true when no further offset can be added until older ones are
 * done. */
bool ccm_offsets_full(const struct ccm_offsets *t);

/* Adds a fetched offset, not yet done. Returns CCM_OK, CCM_EEXHAUSTED when
 * full, or CCM_EINVAL when offset is not above the newest one held. */
int ccm_offsets_add(struct ccm_offsets *t, int64_t offset);

/* Marks offset done (done=false leaves it pending: a message given up while
 * stopping). Returns the offset to commit (one past the last of the done
 * prefix, which leaves the tracker) when that prefix advanced, else -1; an
 * offset not held changes nothing. */
int64_t ccm_offsets_done(struct ccm_offsets *t, int64_t offset, bool done);

/* Forgets every offset held (the partition was revoked). */
void ccm_offsets_reset(struct ccm_offsets *t);

#endif
