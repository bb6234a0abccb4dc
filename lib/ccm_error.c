#include "ccm_error.h"

#include <string.h>

struct error_row {
  const char *name;
  int grpc;
  int http;
  const char *rest_code;
  const char *message;
};

static const struct error_row error_rows[] = {
#define CCM_X_ROW(sym, name, grpc, http, code, msg) {name, grpc, http, code, msg},
    CCM_ERROR_TABLE(CCM_X_ROW)
#undef CCM_X_ROW
};

static const char *const reason_names[] = {
#define CCM_X_ROW(sym, name) name,
    CCM_REASON_TABLE(CCM_X_ROW)
#undef CCM_X_ROW
};

static const struct error_row *row_of(int status) {
  if (status < 0 || status >= CCM_STATUS_COUNT) return &error_rows[CCM_EINTERNAL];
  return &error_rows[status];
}

const char *ccm_error_name(int status) {
  if (status < 0 || status >= CCM_STATUS_COUNT) return "unknown";
  return error_rows[status].name;
}

const char *ccm_error_message(int status) { return row_of(status)->message; }
int ccm_error_grpc_status(int status) { return row_of(status)->grpc; }
int ccm_error_http_status(int status) { return row_of(status)->http; }
const char *ccm_error_rest_code(int status) { return row_of(status)->rest_code; }

int ccm_error_from_grpc(int grpc_status) {
  /* Several ccm codes share a gRPC code (ENOMEM/EEXHAUSTED/ETOOLARGE are all
   * RESOURCE_EXHAUSTED); the canonical one for each gRPC code is fixed here. */
  switch (grpc_status) {
    case 0:
      return CCM_OK;
    case 3:
      return CCM_EINVAL;
    case 4:
      return CCM_ETIMEOUT;
    case 5:
      return CCM_ENOTFOUND;
    case 6:
      return CCM_ECONFLICT;
    case 7:
      return CCM_EFORBIDDEN;
    case 8:
      return CCM_EEXHAUSTED;
    case 9:
      return CCM_EPRECOND;
    case 12:
      return CCM_EUNIMPL;
    case 14:
      return CCM_EUNAVAILABLE;
    case 16:
      return CCM_EUNAUTH;
    default:
      return CCM_EINTERNAL;
  }
}

int ccm_error_parse(const char *name) {
  if (name == NULL) return -1;
  for (int i = 0; i < CCM_STATUS_COUNT; i++) {
    if (strcmp(error_rows[i].name, name) == 0) return i;
  }
  return -1;
}

const char *ccm_reason_name(int reason) {
  if (reason < 0 || reason >= CCM_REASON_COUNT) return "";
  return reason_names[reason];
}

int ccm_reason_parse(const char *name) {
  if (name == NULL || name[0] == '\0') return CCM_REASON_NONE;
  for (int i = 1; i < CCM_REASON_COUNT; i++) {
    if (strcmp(reason_names[i], name) == 0) return i;
  }
  return CCM_REASON_NONE;
}
