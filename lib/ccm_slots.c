#include "ccm_slots.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_config.h"
#include "ccm_db.h"
#include "ccm_error.h"

#define KEY_MAX 512

/* KEYS[1] slot set, KEYS[2] counter; ARGV[1] member, ARGV[2] limit. */
static const char acquire_script[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then "
    "  local n = redis.call('SCARD', KEYS[1]) "
    "  redis.call('SET', KEYS[2], n) return n end "
    "local n = redis.call('SCARD', KEYS[1]) "
    "if n >= tonumber(ARGV[2]) then redis.call('SET', KEYS[2], n) return -1 end "
    "redis.call('SADD', KEYS[1], ARGV[1]) "
    "redis.call('SET', KEYS[2], n + 1) return n + 1";

/* ARGV: the members to remove. */
static const char release_script[] =
    "local r = 0 "
    "for i = 1, #ARGV, 1000 do "
    "  r = r + redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end "
    "redis.call('SET', KEYS[2], redis.call('SCARD', KEYS[1])) return r";

static const char count_script[] =
    "local n = redis.call('SCARD', KEYS[1]) redis.call('SET', KEYS[2], n) return n";

/* ARGV: the members in flight. Added, never replacing: a slot taken while
 * the database was read must survive; members whose attempt is over are
 * given back by the scheduler's leaked-slot sweep. */
static const char reconcile_script[] =
    "for i = 1, #ARGV, 1000 do "
    "  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end "
    "local n = redis.call('SCARD', KEYS[1]) redis.call('SET', KEYS[2], n) return n";

static const char unlock_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0";

static void slot_keys(const struct ccm_config *cfg, char *set_key, size_t len) {
  snprintf(set_key, len, "%s:slots", cfg->redis_concurrency_key);
}

/* Runs EVAL with the given keys/args; returns the reply (caller frees) or
 * NULL when Redis failed (connection error or script error). */
static redisReply *eval(redisContext *c, const char *script, size_t nkeys, const char **keys,
                        size_t nargs, const char *const *args) {
  if (c == NULL || c->err != 0) return NULL;
  size_t argc = 3 + nkeys + nargs;
  const char **argv = malloc(argc * sizeof *argv);
  if (argv == NULL) return NULL;
  char nk[16];
  snprintf(nk, sizeof nk, "%zu", nkeys);
  argv[0] = "EVAL";
  argv[1] = script;
  argv[2] = nk;
  for (size_t i = 0; i < nkeys; i++) argv[3 + i] = keys[i];
  for (size_t i = 0; i < nargs; i++) argv[3 + nkeys + i] = args[i];
  redisReply *r = redisCommandArgv(c, (int)argc, argv, NULL);
  free(argv);
  if (r != NULL && r->type == REDIS_REPLY_ERROR) {
    freeReplyObject(r);
    return NULL;
  }
  return r;
}

int ccm_slots_member(char out[CCM_SLOTS_MEMBER_MAX], const char *call_id, int attempt) {
  if (out == NULL || call_id == NULL || attempt < 1) return CCM_EINVAL;
  int n = snprintf(out, CCM_SLOTS_MEMBER_MAX, "%s:%d", call_id, attempt);
  return n > 0 && n < CCM_SLOTS_MEMBER_MAX ? CCM_OK : CCM_EINVAL;
}

int ccm_slots_acquire(redisContext *c, const struct ccm_config *cfg, const char *call_id,
                      int attempt, int limit, long long *count) {
  char member[CCM_SLOTS_MEMBER_MAX];
  if (cfg == NULL || count == NULL || ccm_slots_member(member, call_id, attempt) != CCM_OK) {
    return CCM_EINVAL;
  }
  char set_key[KEY_MAX], lim[16];
  slot_keys(cfg, set_key, sizeof set_key);
  snprintf(lim, sizeof lim, "%d", limit);
  const char *keys[] = {set_key, cfg->redis_concurrency_key};
  const char *args[] = {member, lim};
  redisReply *r = eval(c, acquire_script, 2, keys, 2, args);
  if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
    if (r != NULL) freeReplyObject(r);
    return CCM_EUNAVAILABLE;
  }
  long long n = r->integer;
  freeReplyObject(r);
  if (n < 0) return CCM_EEXHAUSTED;
  *count = n;
  return CCM_OK;
}

int ccm_slots_release(redisContext *c, const struct ccm_config *cfg, const char *call_id,
                      int attempt) {
  char member[CCM_SLOTS_MEMBER_MAX];
  if (ccm_slots_member(member, call_id, attempt) != CCM_OK) return CCM_EINVAL;
  const char *members[] = {member};
  return ccm_slots_release_members(c, cfg, members, 1);
}

int ccm_slots_release_members(redisContext *c, const struct ccm_config *cfg,
                              const char *const *members, size_t n) {
  if (cfg == NULL || (n > 0 && members == NULL)) return CCM_EINVAL;
  if (n == 0) return CCM_OK;
  char set_key[KEY_MAX];
  slot_keys(cfg, set_key, sizeof set_key);
  const char *keys[] = {set_key, cfg->redis_concurrency_key};
  redisReply *r = eval(c, release_script, 2, keys, n, members);
  if (r == NULL) return CCM_EUNAVAILABLE;
  freeReplyObject(r);
  return CCM_OK;
}

int ccm_slots_members(redisContext *c, const struct ccm_config *cfg, char ***members, size_t *n) {
  if (cfg == NULL || members == NULL || n == NULL) return CCM_EINVAL;
  *members = NULL;
  *n = 0;
  if (c == NULL || c->err != 0) return CCM_EUNAVAILABLE;
  char set_key[KEY_MAX];
  slot_keys(cfg, set_key, sizeof set_key);
  redisReply *r = redisCommand(c, "SMEMBERS %s", set_key);
  if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
    if (r != NULL) freeReplyObject(r);
    return CCM_EUNAVAILABLE;
  }
  char **out = calloc(r->elements + 1, sizeof *out);
  int rc = out != NULL ? CCM_OK : CCM_ENOMEM;
  for (size_t i = 0; rc == CCM_OK && i < r->elements; i++) {
    out[i] = strndup(r->element[i]->str, r->element[i]->len);
    if (out[i] == NULL) rc = CCM_ENOMEM;
  }
  if (rc != CCM_OK) {
    for (size_t i = 0; out != NULL && i < r->elements; i++) free(out[i]);
    free(out);
  } else {
    *members = out;
    *n = r->elements;
  }
  freeReplyObject(r);
  return rc;
}

int ccm_slots_count(redisContext *c, const struct ccm_config *cfg, long long *count) {
  if (cfg == NULL || count == NULL) return CCM_EINVAL;
  char set_key[KEY_MAX];
  slot_keys(cfg, set_key, sizeof set_key);
  const char *keys[] = {set_key, cfg->redis_concurrency_key};
  redisReply *r = eval(c, count_script, 2, keys, 0, NULL);
  if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
    if (r != NULL) freeReplyObject(r);
    return CCM_EUNAVAILABLE;
  }
  *count = r->integer;
  freeReplyObject(r);
  return CCM_OK;
}

int ccm_slots_reconcile(redisContext *c, const struct ccm_config *cfg, const char *const *members,
                        size_t n) {
  if (cfg == NULL || (n > 0 && members == NULL)) return CCM_EINVAL;
  char set_key[KEY_MAX];
  slot_keys(cfg, set_key, sizeof set_key);
  const char *keys[] = {set_key, cfg->redis_concurrency_key};
  redisReply *r = eval(c, reconcile_script, 2, keys, n, members);
  if (r == NULL) return CCM_EUNAVAILABLE;
  freeReplyObject(r);
  return CCM_OK;
}

int ccm_slots_reconcile_from_db(redisContext *c, const struct ccm_config *cfg, PGconn *db, int *n) {
  if (n != NULL) *n = 0;
  if (cfg == NULL || db == NULL) return CCM_EINVAL;
  PGresult *res = NULL;
  int rc = ccm_db_exec(db,
                       "SELECT " CCM_SLOTS_MEMBER_SQL
                       " FROM calls_calllog "
                       "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')",
                       0, NULL, &res);
  if (rc != CCM_OK) return rc;
  int rows = PQntuples(res);
  const char **members = calloc((size_t)rows + 1, sizeof *members);
  if (members == NULL) {
    PQclear(res);
    return CCM_ENOMEM;
  }
  for (int i = 0; i < rows; i++) members[i] = PQgetvalue(res, i, 0);
  rc = ccm_slots_reconcile(c, cfg, members, (size_t)rows);
  free(members);
  PQclear(res);
  if (rc == CCM_OK && n != NULL) *n = rows;
  return rc;
}

int ccm_slots_lock_phone(redisContext *c, const struct ccm_config *cfg, const char *phone,
                         const char *call_id, int ttl_seconds, long long *ttl_left) {
  if (cfg == NULL || phone == NULL || call_id == NULL) return CCM_EINVAL;
  if (c == NULL || c->err != 0) return CCM_EUNAVAILABLE;
  if (ttl_seconds <= 0) return CCM_OK; /* no window: nothing to lock */
  char key[KEY_MAX];
  snprintf(key, sizeof key, "%s%s", cfg->redis_duplicate_prefix, phone);
  redisReply *r = redisCommand(c, "SET %s %s NX EX %d", key, call_id, ttl_seconds);
  if (r == NULL || r->type == REDIS_REPLY_ERROR) {
    if (r != NULL) freeReplyObject(r);
    return CCM_EUNAVAILABLE;
  }
  bool taken = r->type == REDIS_REPLY_STATUS;
  freeReplyObject(r);
  if (taken) return CCM_OK;
  if (ttl_left != NULL) {
    *ttl_left = 0;
    redisReply *t = redisCommand(c, "TTL %s", key);
    if (t != NULL && t->type == REDIS_REPLY_INTEGER && t->integer > 0) *ttl_left = t->integer;
    if (t != NULL) freeReplyObject(t);
  }
  return CCM_EEXHAUSTED;
}

int ccm_slots_unlock_phone(redisContext *c, const struct ccm_config *cfg, const char *phone,
                           const char *call_id) {
  if (cfg == NULL || phone == NULL || call_id == NULL) return CCM_EINVAL;
  char key[KEY_MAX];
  snprintf(key, sizeof key, "%s%s", cfg->redis_duplicate_prefix, phone);
  const char *keys[] = {key};
  const char *args[] = {call_id};
  redisReply *r = eval(c, unlock_script, 1, keys, 1, args);
  if (r == NULL) return CCM_EUNAVAILABLE;
  freeReplyObject(r);
  return CCM_OK;
}
