/* Concurrency slots and duplicate-call locks in Redis (SPEC section 6).
 *
 * The slots are a set of call ids plus the counter `active_calls_count`
 * (REDIS_CONCURRENCY_KEY) that the seed README reads; one Lua script changes
 * both atomically, so acquiring never exceeds the limit, and acquire/release
 * are idempotent per call. Duplicate locks are `call_lock:<E.164>` with the
 * duplicate window as TTL. */
#ifndef CCM_SLOTS_H
#define CCM_SLOTS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct ccm_config;

/* Takes a slot for call_id unless limit slots are in use. Returns CCM_OK
 * with the slot count after the acquisition in *count (a call that already
 * holds a slot keeps it), CCM_EEXHAUSTED when full, CCM_EUNAVAILABLE when
 * Redis fails. */
int ccm_slots_acquire(redisContext *c, const struct ccm_config *cfg, const char *call_id, int limit,
                      long long *count);

/* Gives back call_id's slot; a second release is a no-op. Returns CCM_OK or
 * CCM_EUNAVAILABLE. */
int ccm_slots_release(redisContext *c, const struct ccm_config *cfg, const char *call_id);

/* Reads the number of slots in use. Returns CCM_OK or CCM_EUNAVAILABLE. */
int ccm_slots_count(redisContext *c, const struct ccm_config *cfg, long long *count);

/* Replaces the slot set by exactly the given call ids (the database's calls
 * in flight). Returns CCM_OK or CCM_EUNAVAILABLE. */
int ccm_slots_reconcile(redisContext *c, const struct ccm_config *cfg, const char *const *call_ids,
                        size_t n);

/* Sets call_lock:<phone> = call_id with the given TTL unless it exists.
 * Returns CCM_OK when taken, CCM_EEXHAUSTED when held by another call (its
 * remaining TTL in seconds in *ttl_left when ttl_left is not NULL),
 * CCM_EUNAVAILABLE when Redis fails. */
int ccm_slots_lock_phone(redisContext *c, const struct ccm_config *cfg, const char *phone,
                         const char *call_id, int ttl_seconds, long long *ttl_left);

/* Deletes call_lock:<phone> only when it still holds call_id. Returns CCM_OK
 * or CCM_EUNAVAILABLE. */
int ccm_slots_unlock_phone(redisContext *c, const struct ccm_config *cfg, const char *phone,
                           const char *call_id);

#endif
