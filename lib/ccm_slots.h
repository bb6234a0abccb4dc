/* Concurrency slots and duplicate-call locks in Redis (SPEC section 6).
 *
 * The slots are a set of attempts in flight, members "<call_id>:<attempt>",
 * plus the counter `active_calls_count` (REDIS_CONCURRENCY_KEY) that the seed
 * README reads; one Lua script changes both atomically, so acquiring never
 * exceeds the limit, and acquire/release are idempotent per attempt. Naming
 * the attempt keeps a late release of attempt n from freeing the slot that
 * attempt n+1 just took. Duplicate locks are `call_lock:<E.164>` with the
 * duplicate window as TTL. */
#ifndef CCM_SLOTS_H
#define CCM_SLOTS_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <stddef.h>

struct ccm_config;

/* The slot member of a call's current attempt, as SQL over calls_calllog. */
#define CCM_SLOTS_MEMBER_SQL "call_id || ':' || attempt_count"
#define CCM_SLOTS_MEMBER_MAX 160

/* Writes "<call_id>:<attempt>" into out. Returns CCM_OK or CCM_EINVAL when
 * it does not fit. */
int ccm_slots_member(char out[CCM_SLOTS_MEMBER_MAX], const char *call_id, int attempt);

/* Takes a slot for attempt `attempt` of call_id unless limit slots are in
 * use. Returns CCM_OK with the slot count after the acquisition in *count (an
 * attempt that already holds a slot keeps it), CCM_EEXHAUSTED when full,
 * CCM_EUNAVAILABLE when Redis fails, CCM_EINVAL for bad arguments. */
int ccm_slots_acquire(redisContext *c, const struct ccm_config *cfg, const char *call_id,
                      int attempt, int limit, long long *count);

/* Gives back the slot of that attempt; a second release is a no-op. Returns
 * CCM_OK, CCM_EUNAVAILABLE or CCM_EINVAL. */
int ccm_slots_release(redisContext *c, const struct ccm_config *cfg, const char *call_id,
                      int attempt);

/* Releases the given members (slots found leaked by a sweep). Returns CCM_OK
 * or CCM_EUNAVAILABLE. */
int ccm_slots_release_members(redisContext *c, const struct ccm_config *cfg,
                              const char *const *members, size_t n);

/* Reads the number of slots in use. Returns CCM_OK or CCM_EUNAVAILABLE. */
int ccm_slots_count(redisContext *c, const struct ccm_config *cfg, long long *count);

/* Reads the members of the slot set into a new array of *n strings (the
 * caller frees each string and the array). Returns CCM_OK, CCM_EUNAVAILABLE
 * or CCM_ENOMEM. */
int ccm_slots_members(redisContext *c, const struct ccm_config *cfg, char ***members, size_t *n);

/* Adds the given members (the database's attempts in flight,
 * CCM_SLOTS_MEMBER_SQL) to the slot set and recounts it. Members already
 * there stay: one taken while the database was read is not wiped, and one
 * whose attempt is over is removed by the scheduler's leaked-slot sweep.
 * Returns CCM_OK or CCM_EUNAVAILABLE. */
int ccm_slots_reconcile(redisContext *c, const struct ccm_config *cfg, const char *const *members,
                        size_t n);

/* Reads the attempts in flight from db and reconciles the slot set with
 * them (after a Redis outage the set may be empty or stale). Returns CCM_OK
 * with their number in *n, a database status, CCM_ENOMEM, or
 * CCM_EUNAVAILABLE when Redis failed. */
int ccm_slots_reconcile_from_db(redisContext *c, const struct ccm_config *cfg, PGconn *db, int *n);

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
