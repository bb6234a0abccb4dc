/* Campaign and phone-number RPCs: CreateCampaign, ListCampaigns, GetCampaign,
 * AddPhoneNumbers. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_buf.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_phone.h"
#include "ccm_service.h"

#define NAME_MAX_CHARS 200
#define DESCRIPTION_MAX_CHARS 2000
#define PHONE_BATCH_MAX 10000
#define PHONE_ARRAY_MAX (PHONE_BATCH_MAX * (CCM_PHONE_BUF + 3) + 16)

static const char campaign_not_found[] = "Campaign not found or inactive.";

#define CAMPAIGN_COLUMNS \
  "c.id, c.name, c.description, c.is_active, " CCM_SQL_ISO("c.created_at") ", " \
  CCM_SQL_ISO("c.updated_at") ", "                                                \
  "(SELECT count(*) FROM calls_phonenumber p WHERE p.campaign_id = c.id)"

/* Builds a Campaign message from row `row` of a CAMPAIGN_COLUMNS result. */
static Callmanager__V1__Campaign *campaign_from_row(struct ccm_arena *arena, PGresult *res,
                                                    int row) {
  Callmanager__V1__Campaign *c = ccm_arena_alloc(arena, sizeof *c);
  if (c == NULL) return NULL;
  callmanager__v1__campaign__init(c);
  c->id = ccm_db_get_ll(res, row, 0);
  c->name = ccm_arena_strdup(arena, PQgetvalue(res, row, 1));
  if (!ccm_db_is_null(res, row, 2)) {
    c->_description_case = CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION;
    c->description = ccm_arena_strdup(arena, PQgetvalue(res, row, 2));
  }
  c->is_active = strcmp(PQgetvalue(res, row, 3), "t") == 0;
  c->created_at = ccm_arena_strdup(arena, PQgetvalue(res, row, 4));
  c->updated_at = ccm_arena_strdup(arena, PQgetvalue(res, row, 5));
  c->phone_count = ccm_db_get_ll(res, row, 6);
  if (c->name == NULL || c->created_at == NULL || c->updated_at == NULL) return NULL;
  return c;
}

/* Trims ASCII whitespace at both ends; returns a copy in the arena. */
static char *trimmed(struct ccm_arena *arena, const char *s) {
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)*s)) {
    s++;
    n--;
  }
  while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
  return ccm_arena_strndup(arena, s, n);
}

void ccm_svc_create_campaign(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                             struct ccm_rpc_result *out) {
  const Callmanager__V1__CreateCampaignRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  char *name = trimmed(ctx->arena, req->name);
  if (name == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  if (name[0] == '\0') {
    out->field = "name";
    ccm_svc_fail(out, CCM_EINVAL, "name is required.");
    return;
  }
  if (!ccm_svc_text_ok(name, NAME_MAX_CHARS)) {
    out->field = "name";
    ccm_svc_fail(out, CCM_EINVAL, "name must be 1 to 200 characters of valid UTF-8.");
    return;
  }
  const char *description = NULL;
  if (req->_description_case != 0) {
    description = req->description;
    if (!ccm_svc_text_ok(description, DESCRIPTION_MAX_CHARS)) {
      out->field = "description";
      ccm_svc_fail(out, CCM_EINVAL, "description must be at most 2000 characters of valid UTF-8.");
      return;
    }
  }
  bool active = req->_is_active_case != 0 ? req->is_active : true;
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }
  const char *params[] = {name, description, active ? "true" : "false"};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db,
                       "WITH c AS (INSERT INTO calls_campaign (name, description, is_active) "
                       "VALUES ($1, $2, $3) RETURNING *) SELECT " CAMPAIGN_COLUMNS " FROM c",
                       3, params, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  Callmanager__V1__CreateCampaignResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp != NULL) {
    callmanager__v1__create_campaign_response__init(resp);
    resp->campaign = campaign_from_row(ctx->arena, res, 0);
  }
  PQclear(res);
  if (resp == NULL || resp->campaign == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  ccm_info("calls.campaigns", "Campaign %lld created", (long long)resp->campaign->id);
  out->status = CCM_OK;
  out->response = &resp->base;
}

void ccm_svc_list_campaigns(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                            struct ccm_rpc_result *out) {
  const Callmanager__V1__ListCampaignsRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  if (req->_limit_case != 0 && req->limit < 0) {
    out->field = "limit";
    ccm_svc_fail(out, CCM_EINVAL, "limit must be a non-negative integer.");
    return;
  }
  if (req->offset < 0) {
    out->field = "offset";
    ccm_svc_fail(out, CCM_EINVAL, "offset must be a non-negative integer.");
    return;
  }
  char limit[32], offset[32];
  snprintf(offset, sizeof offset, "%lld", (long long)req->offset);
  snprintf(limit, sizeof limit, "%lld", (long long)req->limit);
  const char *params[] = {req->_limit_case != 0 ? limit : NULL, offset};
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }
  PGresult *res = NULL;
  int rc = ccm_db_exec(db,
                       "SELECT " CAMPAIGN_COLUMNS
                       " FROM calls_campaign c WHERE c.is_active ORDER BY c.id "
                       "LIMIT $1::bigint OFFSET $2::bigint",
                       2, params, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  Callmanager__V1__ListCampaignsResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  int n = PQntuples(res);
  bool ok = resp != NULL;
  if (ok) {
    callmanager__v1__list_campaigns_response__init(resp);
    resp->campaigns = ccm_arena_calloc(ctx->arena, (size_t)n + 1, sizeof *resp->campaigns);
    ok = resp->campaigns != NULL;
  }
  for (int i = 0; ok && i < n; i++) {
    resp->campaigns[i] = campaign_from_row(ctx->arena, res, i);
    ok = resp->campaigns[i] != NULL;
    resp->n_campaigns = (size_t)i + 1;
  }
  PQclear(res);
  if (!ok) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  out->status = CCM_OK;
  out->response = &resp->base;
}

/* Loads an active campaign into *campaign. Returns CCM_OK, CCM_ENOTFOUND or
 * a database status. */
static int load_campaign(struct ccm_rpc_ctx *ctx, PGconn *db, long long id,
                         Callmanager__V1__Campaign **campaign) {
  char idtext[32];
  snprintf(idtext, sizeof idtext, "%lld", id);
  const char *params[] = {idtext};
  PGresult *res = NULL;
  int rc = ccm_db_exec(
      db, "SELECT " CAMPAIGN_COLUMNS " FROM calls_campaign c WHERE c.id = $1 AND c.is_active", 1,
      params, &res);
  if (rc != CCM_OK) return rc;
  if (PQntuples(res) == 0) {
    PQclear(res);
    return CCM_ENOTFOUND;
  }
  *campaign = campaign_from_row(ctx->arena, res, 0);
  PQclear(res);
  return *campaign != NULL ? CCM_OK : CCM_ENOMEM;
}

/* Returns the active campaign `id`, or NULL with out filled: NOT_FOUND
 * "Campaign not found or inactive.", or the database failure. */
static Callmanager__V1__Campaign *active_campaign(struct ccm_rpc_ctx *ctx, long long id,
                                                  struct ccm_rpc_result *out) {
  PGconn *db = id > 0 ? ccm_svc_db(ctx) : NULL;
  if (id > 0 && db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return NULL;
  }
  Callmanager__V1__Campaign *campaign = NULL;
  int rc = id > 0 ? load_campaign(ctx, db, id, &campaign) : CCM_ENOTFOUND;
  if (rc == CCM_ENOTFOUND) {
    ccm_svc_fail(out, CCM_ENOTFOUND, campaign_not_found);
  } else if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
  }
  return rc == CCM_OK ? campaign : NULL;
}

void ccm_svc_get_campaign(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                          struct ccm_rpc_result *out) {
  const Callmanager__V1__GetCampaignRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  Callmanager__V1__Campaign *campaign = active_campaign(ctx, req->id, out);
  if (campaign == NULL) return;
  Callmanager__V1__GetCampaignResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  callmanager__v1__get_campaign_response__init(resp);
  resp->campaign = campaign;
  out->status = CCM_OK;
  out->response = &resp->base;
}

/* Describes an invalid input for the errors list, keeping the message valid
 * UTF-8 and short whatever the client sent. */
static char *invalid_number_message(struct ccm_arena *arena, const char *raw) {
  size_t len = strlen(raw);
  if (len <= CCM_PHONE_MAX_INPUT && ccm_svc_text_ok(raw, CCM_PHONE_MAX_INPUT)) {
    return ccm_arena_printf(arena, "Invalid phone number: %s", raw);
  }
  return ccm_arena_printf(arena, "Invalid phone number: (%zu bytes, not a phone number)", len);
}

static int compare_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void ccm_svc_add_phone_numbers(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                               struct ccm_rpc_result *out) {
  const Callmanager__V1__AddPhoneNumbersRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  if (req->campaign_id <= 0) {
    out->field = "campaign_id";
    ccm_svc_fail(out, CCM_EINVAL, "campaign_id and phone_numbers are required");
    return;
  }
  if (req->n_phone_numbers < 1 || req->n_phone_numbers > PHONE_BATCH_MAX) {
    out->field = "phone_numbers";
    ccm_svc_fail(out, CCM_EINVAL, "phone_numbers must contain 1 to 10000 entries");
    return;
  }
  if (active_campaign(ctx, req->campaign_id, out) == NULL) return;
  PGconn *db = ccm_svc_db(ctx);
  int rc = CCM_OK;
  Callmanager__V1__AddPhoneNumbersResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  size_t n = req->n_phone_numbers;
  char **normalised = ccm_arena_calloc(ctx->arena, n, sizeof *normalised);
  char **errors = ccm_arena_calloc(ctx->arena, n, sizeof *errors);
  char **unique = ccm_arena_calloc(ctx->arena, n, sizeof *unique);
  if (resp == NULL || normalised == NULL || errors == NULL || unique == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  callmanager__v1__add_phone_numbers_response__init(resp);
  resp->errors = errors;
  size_t valid = 0;
  for (size_t i = 0; i < n; i++) {
    char e164[CCM_PHONE_BUF];
    const char *raw = req->phone_numbers[i];
    if (ccm_phone_normalize(raw, strlen(raw), e164) != CCM_OK) {
      errors[resp->n_errors++] = invalid_number_message(ctx->arena, raw);
      continue;
    }
    normalised[valid] = ccm_arena_strdup(ctx->arena, e164);
    if (normalised[valid] == NULL) {
      ccm_svc_fail(out, CCM_ENOMEM, NULL);
      return;
    }
    valid++;
  }
  /* Repeats inside the request are duplicates too; keep first occurrences. */
  memcpy(unique, normalised, valid * sizeof *unique);
  qsort(unique, valid, sizeof *unique, compare_str);
  size_t distinct = 0;
  for (size_t i = 0; i < valid; i++) {
    if (distinct == 0 || strcmp(unique[distinct - 1], unique[i]) != 0)
      unique[distinct++] = unique[i];
  }
  resp->success = true;
  resp->campaign_id = req->campaign_id;
  resp->phone_numbers = ccm_arena_calloc(ctx->arena, distinct + 1, sizeof *resp->phone_numbers);
  if (resp->phone_numbers == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  if (distinct > 0) {
    /* One round trip: the numbers travel as one array parameter. */
    struct ccm_buf array;
    ccm_buf_init(&array, PHONE_ARRAY_MAX);
    rc = ccm_buf_append_str(&array, "{");
    for (size_t i = 0; rc == CCM_OK && i < distinct; i++) {
      rc = ccm_buf_printf(&array, "%s%s", i > 0 ? "," : "", unique[i]);
    }
    if (rc == CCM_OK) rc = ccm_buf_append_str(&array, "}");
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", (long long)req->campaign_id);
    const char *params[] = {idtext, array.data};
    PGresult *res = NULL;
    if (rc == CCM_OK) {
      rc = ccm_db_exec(db,
                       "INSERT INTO calls_phonenumber (campaign_id, phone_number) "
                       "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING "
                       "RETURNING phone_number",
                       2, params, &res);
    }
    ccm_buf_free(&array);
    if (rc != CCM_OK) {
      ccm_svc_db_fail(out, rc);
      return;
    }
    int inserted = PQntuples(res);
    char **added = ccm_arena_calloc(ctx->arena, (size_t)inserted + 1, sizeof *added);
    bool *reported = ccm_arena_calloc(ctx->arena, (size_t)inserted + 1, sizeof *reported);
    for (int i = 0; added != NULL && i < inserted; i++) added[i] = PQgetvalue(res, i, 0);
    if (added != NULL) qsort(added, (size_t)inserted, sizeof *added, compare_str);
    /* Report added numbers in request order, each once. */
    for (size_t i = 0; added != NULL && reported != NULL && i < valid; i++) {
      char **hit = bsearch(&normalised[i], added, (size_t)inserted, sizeof *added, compare_str);
      if (hit == NULL || reported[hit - added]) continue;
      reported[hit - added] = true;
      resp->phone_numbers[resp->n_phone_numbers++] = normalised[i];
    }
    PQclear(res);
    if (added == NULL || reported == NULL) {
      ccm_svc_fail(out, CCM_ENOMEM, NULL);
      return;
    }
  }
  resp->added_count = (int64_t)resp->n_phone_numbers;
  resp->duplicate_count = (int64_t)(valid - resp->n_phone_numbers);
  ccm_info("calls.campaigns", "Campaign %lld: %zu numbers added, %lld duplicates, %zu invalid",
           (long long)req->campaign_id, resp->n_phone_numbers, (long long)resp->duplicate_count,
           resp->n_errors);
  out->status = CCM_OK;
  out->response = &resp->base;
}
