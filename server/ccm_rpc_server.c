/* The gRPC server transport (ccm_rpc.h) over the gRPC core C API.
 *
 * Threads and queues: one completion queue, drained by `workers` threads.
 * Every served method (the application's, Health/Check, both reflection
 * streams, and a catch-all for unknown methods) owns a pool of `workers`
 * slots; a slot is one armed request that, once matched, carries its call to
 * the end and is then armed again. A slot is used as the tag of its batches
 * through two embedded tags (main batches, and the stream's separate
 * RECV_CLOSE_ON_SERVER), so any worker can continue any call.
 *
 * Unary calls: metadata and deadline go into the ctx, the payload is
 * unpacked into the slot's arena, the handler runs on the worker, and one
 * batch answers (initial metadata, message when OK, status with trailing
 * ccm-error-* metadata, RECV_CLOSE_ON_SERVER). Reflection is a bidi stream:
 * one {SEND_MESSAGE, RECV_MESSAGE} batch per request, status OK on the
 * client's half-close. Responses are packed straight into a gRPC slice (no
 * arena copy). Health/Check asks options->health (NULL: SERVING for any
 * name). ccm_rpc_server_start returns once every worker_init has run.
 *
 * Shutdown: a stop flag keeps slots from being armed again;
 * grpc_server_shutdown_and_notify fails the armed ones; in-flight calls get
 * grace_ms, then grpc_server_cancel_all_calls. Only when every slot is
 * retired and the shutdown tag has fired are the server destroyed and the
 * queue shut down, so the workers see GRPC_QUEUE_SHUTDOWN and exit.
 *
 * Metadata values longer than CCM_RPC_METADATA_MAX: an over-long
 * x-auth-token is treated as absent, so the handler decides (it answers
 * UNAUTHENTICATED when auth is on, and auth may be off); any other over-long
 * value is answered INVALID_ARGUMENT with ccm-error-field set to the key,
 * without calling the handler (silently dropping an idempotency key could
 * duplicate work). When a key repeats, its first value counts. */
#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_rpc.h"
#include "ccm_time.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

#define LOGGER "api.grpc"
/* Short names for the oneof cases of the reflection messages. */
#define REFL_REQ(name) GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##name
#define REFL_RESP(name) \
  GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##name
#define RPC_ARENA_MAX ((size_t)64 * 1024 * 1024) /* per call; requests are <= 4 MiB */
#define RPC_MAX_WORKERS 1024
#define RPC_LOG_PATH_MAX 200  /* bytes of an unknown method's path in logs */
#define RPC_STUCK_LOG_MS 5000 /* warn this often while shutdown waits for handlers */
#define REFL_MAX_DEPTH 64     /* nesting of messages in a descriptor */
#define REFL_ERR_NOT_FOUND 5  /* grpc::StatusCode in reflection error_response */
#define REFL_ERR_INVALID 3
#define REFL_ERR_UNIMPLEMENTED 12

static const char HEALTH_PATH[] = "/grpc.health.v1.Health/Check";
static const char REFL_V1_PATH[] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
static const char REFL_V1ALPHA_PATH[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

static const char *const builtin_services[] = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
};

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

enum rpc_kind { RPC_UNARY, RPC_HEALTH, RPC_REFLECTION, RPC_UNKNOWN };

enum slot_phase {
  PHASE_IDLE,        /* not armed */
  PHASE_REQUESTED,   /* armed, waiting for a call */
  PHASE_UNARY_SENT,  /* unary answer batch in flight */
  PHASE_STREAM_READ, /* stream: {(SEND_MESSAGE,) RECV_MESSAGE} in flight */
  PHASE_STREAM_DONE, /* stream: SEND_STATUS_FROM_SERVER in flight */
};

/* A served method; the catch-all has kind RPC_UNKNOWN and no handle. */
struct rpc_method {
  char *path;
  const ProtobufCMessageDescriptor *request_descriptor;
  ccm_rpc_handler handler;
  enum rpc_kind kind;
  void *handle; /* grpc_server_register_method */
};

struct rpc_slot;

/* What a completion-queue tag points to; slot NULL is the shutdown tag. */
struct rpc_tag {
  struct rpc_slot *slot;
  bool is_close;
};

struct rpc_slot {
  struct ccm_rpc_server *server;
  struct rpc_method *method;
  struct rpc_tag main_tag;
  struct rpc_tag close_tag;
  enum slot_phase phase;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array metadata;
  grpc_call_details details; /* catch-all only */
  grpc_byte_buffer *payload; /* request (unary) or last received message (stream) */
  grpc_byte_buffer *send_buf;
  grpc_slice status_details;
  grpc_metadata trailing[3];
  size_t trailing_count;
  grpc_status_code status; /* what was sent, for the log line */
  bool status_sent;
  int cancelled;   /* RECV_CLOSE_ON_SERVER */
  atomic_int refs; /* outstanding batches of a matched call */
  struct timespec started;
  const char *log_path;
  struct ccm_arena arena;
};

struct rpc_worker {
  struct ccm_rpc_server *server;
  int index;
  void *data;
  pthread_t thread;
};

/* A FileDescriptorProto of the descriptor set: its exact bytes and deps. */
struct refl_file {
  const uint8_t *data;
  size_t len;
  char *name;
  char **dep_names;
  size_t n_dep_names;
  size_t *deps; /* indexes of resolved dependencies */
  size_t n_deps;
};

struct refl_symbol {
  char *name; /* fully qualified, no leading dot */
  size_t file;
};

struct refl_index {
  uint8_t *blob; /* copy of the descriptor set */
  struct refl_file *files;
  size_t n_files;
  struct refl_symbol *symbols;
  size_t n_symbols;
  size_t cap_symbols;
};

enum server_state { STATE_CREATED, STATE_STARTED, STATE_STOPPED };

struct ccm_rpc_server {
  struct ccm_rpc_server_options opt;
  grpc_server *server;
  grpc_completion_queue *cq;
  struct rpc_method *methods; /* app methods, health, reflection x2, catch-all */
  size_t n_methods;
  struct rpc_slot *slots;
  size_t n_slots;
  struct rpc_worker *workers;
  int n_workers;   /* threads running */
  char **services; /* list_services answer */
  size_t n_services;
  struct refl_index refl;
  struct rpc_tag shutdown_tag;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_bool stopping;
  bool notified; /* shutdown tag fired; under mu */
  size_t live;   /* slots not retired; under mu */
  int ready;     /* workers past worker_init; under mu */
  enum server_state state;
};

/* ---- small helpers ---------------------------------------------------- */

/* Returns the status's upper-case gRPC name; "UNKNOWN" when out of range. */
static const char *status_name(grpc_status_code code) {
  if ((int)code < 0 || (size_t)code >= sizeof status_names / sizeof status_names[0]) {
    return "UNKNOWN";
  }
  return status_names[code];
}

/* Returns the current Unix time in ms (never fails on Linux). */
static int64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Returns the milliseconds elapsed since a CLOCK_MONOTONIC instant. */
static double elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - since->tv_sec) * 1000.0 +
         (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

/* Converts a gRPC deadline to absolute Unix ms; INT64_MAX for none. */
static int64_t deadline_unix_ms(gpr_timespec deadline) {
  if (deadline.tv_sec >= INT64_MAX / 1000 - 1) return INT64_MAX;
  gpr_timespec rt = gpr_convert_clock_type(deadline, GPR_CLOCK_REALTIME);
  if (rt.tv_sec >= INT64_MAX / 1000 - 1) return INT64_MAX;
  return rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
}

/* Returns a malloc'd copy of s, NULL when out of memory. */
static char *dup_string(const char *s, size_t len) {
  char *p = malloc(len + 1);
  if (p == NULL) return NULL;
  memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

/* Packs a message into a new byte buffer (never NULL: gpr_malloc aborts). */
static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice slice = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

/* Unpacks a byte buffer with desc into the arena; NULL when malformed. */
static ProtobufCMessage *unpack_message(grpc_byte_buffer *bb,
                                        const ProtobufCMessageDescriptor *desc,
                                        struct ccm_arena *arena) {
  if (bb == NULL) return NULL;
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) return NULL;
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  ProtobufCAllocator alloc;
  ccm_arena_protobuf_allocator(arena, &alloc);
  ProtobufCMessage *msg =
      protobuf_c_message_unpack(desc, &alloc, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  return msg;
}

/* ---- reflection index: a minimal protobuf wire reader ------------------ */

struct wire {
  const uint8_t *p;
  const uint8_t *end;
};

struct wire_field {
  uint32_t number;
  uint32_t type;
  uint64_t varint;
  const uint8_t *data;
  size_t len;
};

/* Reads a varint; false when truncated or longer than 10 bytes. */
static bool wire_varint(struct wire *w, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (w->p >= w->end) return false;
    uint8_t b = *w->p++;
    v |= (uint64_t)(b & 0x7f) << (shift < 64 ? shift : 63);
    if ((b & 0x80) == 0) {
      *out = v;
      return true;
    }
  }
  return false;
}

/* Reads the next field: 1 with *f filled, 0 at the end, -1 when malformed
 * (groups included: descriptor.proto has none). */
static int wire_next(struct wire *w, struct wire_field *f) {
  if (w->p >= w->end) return 0;
  uint64_t key;
  if (!wire_varint(w, &key)) return -1;
  if ((key >> 3) == 0 || (key >> 3) > 0x1fffffff) return -1;
  f->number = (uint32_t)(key >> 3);
  f->type = (uint32_t)(key & 7);
  f->data = NULL;
  f->len = 0;
  size_t skip = 0;
  switch (f->type) {
    case 0:
      return wire_varint(w, &f->varint) ? 1 : -1;
    case 1:
      skip = 8;
      break;
    case 5:
      skip = 4;
      break;
    case 2: {
      uint64_t len;
      if (!wire_varint(w, &len)) return -1;
      if (len > (uint64_t)(w->end - w->p)) return -1;
      f->data = w->p;
      f->len = (size_t)len;
      w->p += len;
      return 1;
    }
    default:
      return -1;
  }
  if (skip > (size_t)(w->end - w->p)) return -1;
  w->p += skip;
  return 1;
}

/* Returns "prefix.name" (or name when prefix is empty) malloc'd; NULL on OOM. */
static char *qualify(const char *prefix, const uint8_t *name, size_t len) {
  size_t plen = strlen(prefix);
  char *out = malloc(plen + 1 + len + 1);
  if (out == NULL) return NULL;
  size_t at = 0;
  if (plen > 0) {
    memcpy(out, prefix, plen);
    out[plen] = '.';
    at = plen + 1;
  }
  memcpy(out + at, name, len);
  out[at + len] = '\0';
  return out;
}

/* Takes ownership of name and adds it; CCM_ENOMEM (name freed) on failure. */
static int refl_add_symbol(struct refl_index *ix, char *name, size_t file) {
  if (name == NULL) return CCM_ENOMEM;
  if (ix->n_symbols == ix->cap_symbols) {
    size_t cap = ix->cap_symbols == 0 ? 64 : ix->cap_symbols * 2;
    struct refl_symbol *grown = realloc(ix->symbols, cap * sizeof *grown);
    if (grown == NULL) {
      free(name);
      return CCM_ENOMEM;
    }
    ix->symbols = grown;
    ix->cap_symbols = cap;
  }
  ix->symbols[ix->n_symbols].name = name;
  ix->symbols[ix->n_symbols].file = file;
  ix->n_symbols++;
  return CCM_OK;
}

/* Finds field 1 (name) of a descriptor message; CCM_EINVAL when malformed
 * or missing. */
static int wire_find_name(const uint8_t *data, size_t len, const uint8_t **name, size_t *name_len) {
  struct wire w = {data, data + len};
  struct wire_field f;
  int rc;
  *name = NULL;
  *name_len = 0;
  for (rc = wire_next(&w, &f); rc == 1; rc = wire_next(&w, &f)) {
    if (f.number == 1 && f.type == 2) {
      *name = f.data;
      *name_len = f.len;
    }
  }
  if (rc < 0 || *name == NULL) return CCM_EINVAL;
  return CCM_OK;
}

/* Indexes a named element (enum) under prefix; CCM_EINVAL/CCM_ENOMEM. */
static int refl_index_named(struct refl_index *ix, const char *prefix, const struct wire_field *f,
                            size_t file) {
  const uint8_t *name = NULL;
  size_t len = 0;
  if (wire_find_name(f->data, f->len, &name, &len) != CCM_OK) return CCM_EINVAL;
  return refl_add_symbol(ix, qualify(prefix, name, len), file);
}

/* Indexes a DescriptorProto: itself, nested messages (3) and enums (4). */
static int refl_index_message(struct refl_index *ix, const char *prefix,
                              const struct wire_field *msg, size_t file, int depth) {
  if (depth > REFL_MAX_DEPTH) return CCM_EINVAL;
  const uint8_t *name = NULL;
  size_t len = 0;
  if (wire_find_name(msg->data, msg->len, &name, &len) != CCM_OK) return CCM_EINVAL;
  char *full = qualify(prefix, name, len);
  int rc = refl_add_symbol(ix, full, file);
  if (rc != CCM_OK) return rc;
  struct wire w = {msg->data, msg->data + msg->len};
  struct wire_field f;
  int more;
  for (more = wire_next(&w, &f); more == 1; more = wire_next(&w, &f)) {
    if (f.type != 2) continue;
    if (f.number == 3) rc = refl_index_message(ix, full, &f, file, depth + 1);
    if (f.number == 4) rc = refl_index_named(ix, full, &f, file);
    if (rc != CCM_OK) return rc;
  }
  return more < 0 ? CCM_EINVAL : CCM_OK;
}

/* Indexes a ServiceDescriptorProto and its methods (2). */
static int refl_index_service(struct refl_index *ix, const char *prefix,
                              const struct wire_field *svc, size_t file) {
  const uint8_t *name = NULL;
  size_t len = 0;
  if (wire_find_name(svc->data, svc->len, &name, &len) != CCM_OK) return CCM_EINVAL;
  char *full = qualify(prefix, name, len);
  int rc = refl_add_symbol(ix, full, file);
  if (rc != CCM_OK) return rc;
  struct wire w = {svc->data, svc->data + svc->len};
  struct wire_field f;
  int more;
  for (more = wire_next(&w, &f); more == 1; more = wire_next(&w, &f)) {
    if (f.number != 2 || f.type != 2) continue;
    rc = refl_index_named(ix, full, &f, file);
    if (rc != CCM_OK) return rc;
  }
  return more < 0 ? CCM_EINVAL : CCM_OK;
}

/* Indexes one FileDescriptorProto: name (1), package (2), dependencies (3),
 * messages (4), enums (5), services (6). */
static int refl_index_file(struct refl_index *ix, size_t file) {
  struct refl_file *rf = &ix->files[file];
  struct wire w = {rf->data, rf->data + rf->len};
  struct wire_field f;
  char *package = NULL;
  int more;
  size_t n_deps = 0;
  const uint8_t *name = NULL;
  const uint8_t *pkg = NULL;
  size_t name_len = 0;
  size_t pkg_len = 0;
  for (more = wire_next(&w, &f); more == 1; more = wire_next(&w, &f)) {
    if (f.type != 2) continue;
    if (f.number == 1 && name == NULL) {
      name = f.data;
      name_len = f.len;
    }
    if (f.number == 2 && pkg == NULL) {
      pkg = f.data;
      pkg_len = f.len;
    }
    if (f.number == 3) n_deps++;
  }
  if (more < 0 || name == NULL) return CCM_EINVAL;
  rf->name = dup_string((const char *)name, name_len);
  package = dup_string(pkg != NULL ? (const char *)pkg : "", pkg_len);
  rf->dep_names = calloc(n_deps + 1, sizeof *rf->dep_names);
  rf->deps = calloc(n_deps + 1, sizeof *rf->deps);
  int rc = CCM_OK;
  if (rf->name == NULL || package == NULL || rf->dep_names == NULL || rf->deps == NULL) {
    rc = CCM_ENOMEM;
  }
  const char *prefix = package != NULL ? package : "";
  w.p = rf->data;
  while (rc == CCM_OK && wire_next(&w, &f) == 1) {
    if (f.type != 2) continue;
    if (f.number == 3) {
      rf->dep_names[rf->n_dep_names] = dup_string((const char *)f.data, f.len);
      if (rf->dep_names[rf->n_dep_names++] == NULL) rc = CCM_ENOMEM;
    }
    if (f.number == 4) rc = refl_index_message(ix, prefix, &f, file, 0);
    if (f.number == 5) rc = refl_index_named(ix, prefix, &f, file);
    if (f.number == 6) rc = refl_index_service(ix, prefix, &f, file);
  }
  free(package);
  return rc;
}

/* Returns the index of the file with that name, or SIZE_MAX. */
static size_t refl_find_file(const struct refl_index *ix, const char *name) {
  for (size_t i = 0; i < ix->n_files; i++) {
    if (strcmp(ix->files[i].name, name) == 0) return i;
  }
  return SIZE_MAX;
}

/* Returns the index of the file declaring symbol (a leading '.' is
 * ignored), or SIZE_MAX. */
static size_t refl_find_symbol(const struct refl_index *ix, const char *symbol) {
  if (symbol[0] == '.') symbol++;
  for (size_t i = 0; i < ix->n_symbols; i++) {
    if (strcmp(ix->symbols[i].name, symbol) == 0) return ix->symbols[i].file;
  }
  return SIZE_MAX;
}

/* Releases the index; safe on a zeroed or partly built one. */
static void refl_free(struct refl_index *ix) {
  for (size_t i = 0; i < ix->n_files; i++) {
    struct refl_file *rf = &ix->files[i];
    free(rf->name);
    for (size_t d = 0; d < rf->n_dep_names; d++) free(rf->dep_names[d]);
    free(rf->dep_names);
    free(rf->deps);
  }
  for (size_t i = 0; i < ix->n_symbols; i++) free(ix->symbols[i].name);
  free(ix->files);
  free(ix->symbols);
  free(ix->blob);
  memset(ix, 0, sizeof *ix);
}

/* Builds the index from a serialized FileDescriptorSet, keeping a copy of
 * it; CCM_EINVAL when malformed, CCM_ENOMEM. An empty set is valid. */
static int refl_build(struct refl_index *ix, const unsigned char *set, size_t len) {
  memset(ix, 0, sizeof *ix);
  if (len == 0) return CCM_OK;
  ix->blob = malloc(len);
  if (ix->blob == NULL) return CCM_ENOMEM;
  memcpy(ix->blob, set, len);
  struct wire w = {ix->blob, ix->blob + len};
  struct wire_field f;
  int more;
  size_t count = 0;
  for (more = wire_next(&w, &f); more == 1; more = wire_next(&w, &f)) {
    if (f.number == 1 && f.type == 2) count++;
  }
  if (more < 0) return CCM_EINVAL;
  ix->files = calloc(count + 1, sizeof *ix->files);
  if (ix->files == NULL) return CCM_ENOMEM;
  w.p = ix->blob;
  while (wire_next(&w, &f) == 1) {
    if (f.number != 1 || f.type != 2) continue;
    ix->files[ix->n_files].data = f.data;
    ix->files[ix->n_files].len = f.len;
    ix->n_files++;
    int rc = refl_index_file(ix, ix->n_files - 1);
    if (rc != CCM_OK) return rc;
  }
  for (size_t i = 0; i < ix->n_files; i++) {
    struct refl_file *rf = &ix->files[i];
    for (size_t d = 0; d < rf->n_dep_names; d++) {
      size_t dep = refl_find_file(ix, rf->dep_names[d]);
      if (dep == SIZE_MAX) {
        ccm_warn(LOGGER, "Reflection: %s imports %s, which is not in the descriptor set", rf->name,
                 rf->dep_names[d]);
        continue;
      }
      rf->deps[rf->n_deps++] = dep;
    }
  }
  return CCM_OK;
}

/* Fills out with the file and its transitive dependencies, the file first;
 * CCM_ENOMEM when the arena is exhausted. */
static int refl_closure(const struct refl_index *ix, size_t root, struct ccm_arena *arena,
                        Grpc__Reflection__V1alpha__FileDescriptorResponse *out) {
  size_t *queue = ccm_arena_calloc(arena, ix->n_files, sizeof *queue);
  bool *seen = ccm_arena_calloc(arena, ix->n_files, sizeof *seen);
  ProtobufCBinaryData *bins = ccm_arena_calloc(arena, ix->n_files, sizeof *bins);
  if (queue == NULL || seen == NULL || bins == NULL) return CCM_ENOMEM;
  size_t head = 0;
  size_t tail = 0;
  queue[tail++] = root;
  seen[root] = true;
  while (head < tail) {
    const struct refl_file *rf = &ix->files[queue[head++]];
    for (size_t d = 0; d < rf->n_deps; d++) {
      if (seen[rf->deps[d]]) continue;
      seen[rf->deps[d]] = true;
      queue[tail++] = rf->deps[d];
    }
  }
  for (size_t i = 0; i < tail; i++) {
    bins[i].data = (uint8_t *)ix->files[queue[i]].data;
    bins[i].len = ix->files[queue[i]].len;
  }
  out->n_file_descriptor_proto = tail;
  out->file_descriptor_proto = bins;
  return CCM_OK;
}

/* ---- reflection requests ----------------------------------------------- */

/* Sets an in-stream error_response; CCM_ENOMEM when the arena is full. */
static int refl_error(struct ccm_arena *arena,
                      Grpc__Reflection__V1alpha__ServerReflectionResponse *r, int code,
                      const char *message) {
  Grpc__Reflection__V1alpha__ErrorResponse *e = ccm_arena_alloc(arena, sizeof *e);
  if (e == NULL) return CCM_ENOMEM;
  grpc__reflection__v1alpha__error_response__init(e);
  e->error_code = code;
  e->error_message = (char *)message;
  r->message_response_case = REFL_RESP(ERROR_RESPONSE);
  r->error_response = e;
  return CCM_OK;
}

/* Answers list_services; CCM_ENOMEM when the arena is full. */
static int refl_list(const struct ccm_rpc_server *srv, struct ccm_arena *arena,
                     Grpc__Reflection__V1alpha__ServerReflectionResponse *r) {
  Grpc__Reflection__V1alpha__ListServiceResponse *list = ccm_arena_alloc(arena, sizeof *list);
  Grpc__Reflection__V1alpha__ServiceResponse **items =
      ccm_arena_calloc(arena, srv->n_services + 1, sizeof *items);
  if (list == NULL || items == NULL) return CCM_ENOMEM;
  grpc__reflection__v1alpha__list_service_response__init(list);
  for (size_t i = 0; i < srv->n_services; i++) {
    items[i] = ccm_arena_alloc(arena, sizeof *items[i]);
    if (items[i] == NULL) return CCM_ENOMEM;
    grpc__reflection__v1alpha__service_response__init(items[i]);
    items[i]->name = srv->services[i];
  }
  list->n_service = srv->n_services;
  list->service = items;
  r->message_response_case = REFL_RESP(LIST_SERVICES_RESPONSE);
  r->list_services_response = list;
  return CCM_OK;
}

/* Answers with a file and its dependencies, or error 5 when file is
 * SIZE_MAX; CCM_ENOMEM when the arena is full. */
static int refl_files(const struct ccm_rpc_server *srv, struct ccm_arena *arena, size_t file,
                      const char *what, const char *name,
                      Grpc__Reflection__V1alpha__ServerReflectionResponse *r) {
  if (file == SIZE_MAX) {
    char *msg = ccm_arena_printf(arena, "%s not found: %s", what, name);
    if (msg == NULL) return CCM_ENOMEM;
    return refl_error(arena, r, REFL_ERR_NOT_FOUND, msg);
  }
  Grpc__Reflection__V1alpha__FileDescriptorResponse *fd = ccm_arena_alloc(arena, sizeof *fd);
  if (fd == NULL) return CCM_ENOMEM;
  grpc__reflection__v1alpha__file_descriptor_response__init(fd);
  int rc = refl_closure(&srv->refl, file, arena, fd);
  if (rc != CCM_OK) return rc;
  r->message_response_case = REFL_RESP(FILE_DESCRIPTOR_RESPONSE);
  r->file_descriptor_response = fd;
  return CCM_OK;
}

/* Answers one ServerReflectionRequest into *out. Returns CCM_EINVAL when the
 * request cannot be decoded (the stream then ends INVALID_ARGUMENT),
 * CCM_ENOMEM when the arena is full. */
static int refl_answer(const struct ccm_rpc_server *srv, struct ccm_arena *arena,
                       grpc_byte_buffer *in, grpc_byte_buffer **out) {
  ProtobufCMessage *msg =
      unpack_message(in, &grpc__reflection__v1alpha__server_reflection_request__descriptor, arena);
  if (msg == NULL) return CCM_EINVAL;
  Grpc__Reflection__V1alpha__ServerReflectionRequest *req =
      (Grpc__Reflection__V1alpha__ServerReflectionRequest *)msg;
  Grpc__Reflection__V1alpha__ServerReflectionResponse resp =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
  resp.valid_host = req->host;
  resp.original_request = req;
  int rc;
  switch (req->message_request_case) {
    case REFL_REQ(LIST_SERVICES):
      rc = refl_list(srv, arena, &resp);
      break;
    case REFL_REQ(FILE_BY_FILENAME):
      rc = refl_files(srv, arena, refl_find_file(&srv->refl, req->file_by_filename), "File",
                      req->file_by_filename, &resp);
      break;
    case REFL_REQ(FILE_CONTAINING_SYMBOL):
      rc = refl_files(srv, arena, refl_find_symbol(&srv->refl, req->file_containing_symbol),
                      "Symbol", req->file_containing_symbol, &resp);
      break;
    case REFL_REQ(FILE_CONTAINING_EXTENSION):
    case REFL_REQ(ALL_EXTENSION_NUMBERS_OF_TYPE):
      rc = refl_error(arena, &resp, REFL_ERR_UNIMPLEMENTED, "Extensions are not supported.");
      break;
    default:
      rc = refl_error(arena, &resp, REFL_ERR_INVALID, "Empty reflection request.");
      break;
  }
  if (rc != CCM_OK) return rc;
  *out = pack_message(&resp.base);
  return CCM_OK;
}

/* ---- slots: arming, finishing, retiring --------------------------------- */

/* Marks a slot as no longer armed and wakes the shutdown waiter. */
static void slot_retire(struct rpc_slot *s) {
  struct ccm_rpc_server *srv = s->server;
  s->phase = PHASE_IDLE;
  pthread_mutex_lock(&srv->mu);
  srv->live--;
  if (srv->live == 0) pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* Arms the slot for its method's next call; retires it instead when the
 * server is stopping or the request cannot be queued. */
static void slot_arm(struct rpc_slot *s) {
  struct ccm_rpc_server *srv = s->server;
  if (atomic_load(&srv->stopping)) {
    slot_retire(s);
    return;
  }
  s->call = NULL;
  s->payload = NULL;
  s->send_buf = NULL;
  s->status_details = grpc_empty_slice();
  s->trailing_count = 0;
  s->status = GRPC_STATUS_OK;
  s->status_sent = false;
  s->cancelled = 0;
  s->log_path = s->method->path;
  atomic_store(&s->refs, 0);
  grpc_metadata_array_init(&s->metadata);
  ccm_arena_init(&s->arena, RPC_ARENA_MAX);
  s->phase = PHASE_REQUESTED;
  grpc_call_error err;
  if (s->method->kind == RPC_UNKNOWN) {
    grpc_call_details_init(&s->details);
    err = grpc_server_request_call(srv->server, &s->call, &s->details, &s->metadata, srv->cq,
                                   srv->cq, &s->main_tag);
  } else {
    grpc_byte_buffer **payload = s->method->kind == RPC_REFLECTION ? NULL : &s->payload;
    err =
        grpc_server_request_registered_call(srv->server, s->method->handle, &s->call, &s->deadline,
                                            &s->metadata, payload, srv->cq, srv->cq, &s->main_tag);
  }
  if (err == GRPC_CALL_OK) return;
  ccm_error(LOGGER, "Cannot arm a request for %s: error %d", s->method->path, (int)err);
  grpc_metadata_array_destroy(&s->metadata);
  if (s->method->kind == RPC_UNKNOWN) grpc_call_details_destroy(&s->details);
  slot_retire(s);
}

/* Releases what a matched call holds (nothing fails here). */
static void slot_release(struct rpc_slot *s) {
  if (s->call != NULL) grpc_call_unref(s->call);
  s->call = NULL;
  grpc_metadata_array_destroy(&s->metadata);
  if (s->method->kind == RPC_UNKNOWN) grpc_call_details_destroy(&s->details);
  if (s->payload != NULL) grpc_byte_buffer_destroy(s->payload);
  if (s->send_buf != NULL) grpc_byte_buffer_destroy(s->send_buf);
  s->payload = NULL;
  s->send_buf = NULL;
  grpc_slice_unref(s->status_details);
  s->status_details = grpc_empty_slice();
  for (size_t i = 0; i < s->trailing_count; i++) grpc_slice_unref(s->trailing[i].value);
  s->trailing_count = 0;
  ccm_arena_free(&s->arena);
}

/* Logs the call's api.log line, releases it and arms the slot again. */
static void slot_finish(struct rpc_slot *s) {
  const char *name = status_name(s->status);
  if (s->cancelled || !s->status_sent) {
    bool expired = deadline_unix_ms(s->deadline) <= now_unix_ms();
    name = expired ? "DEADLINE_EXCEEDED" : "CANCELLED";
  }
  ccm_log_write(CCM_LOG_API, CCM_LOG_INFO, LOGGER, "Incoming RPC: %s status=%s latency_ms=%.1f",
                s->log_path, name, elapsed_ms(&s->started));
  slot_release(s);
  slot_arm(s);
}

/* Drops one outstanding batch of a matched call; the last one finishes it. */
static void slot_unref(struct rpc_slot *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) slot_finish(s);
}

/* Starts a batch on the slot's call; on failure cancels the call and
 * returns false (the caller then drops the batch's reference itself). */
static bool slot_batch(struct rpc_slot *s, const grpc_op *ops, size_t n, struct rpc_tag *tag) {
  grpc_call_error err = grpc_call_start_batch(s->call, ops, n, tag, NULL);
  if (err == GRPC_CALL_OK) return true;
  ccm_error(LOGGER, "grpc_call_start_batch failed for %s: error %d", s->log_path, (int)err);
  grpc_call_cancel_with_status(s->call, GRPC_STATUS_INTERNAL, "Internal server error.", NULL);
  return false;
}

/* Adds a trailing metadata entry when the value is set and legal. */
static void add_trailing(struct rpc_slot *s, const char *key, const char *value) {
  if (value == NULL || value[0] == '\0' || s->trailing_count >= 3) return;
  grpc_slice v = grpc_slice_from_copied_string(value);
  if (!grpc_header_nonbin_value_is_legal(v)) {
    ccm_warn(LOGGER, "Dropped illegal %s metadata value for %s", key, s->log_path);
    grpc_slice_unref(v);
    return;
  }
  grpc_metadata *md = &s->trailing[s->trailing_count++];
  memset(md, 0, sizeof *md);
  md->key = grpc_slice_from_static_string(key);
  md->value = v;
}

/* Sends the unary answer in one batch; a failed start finishes the slot. */
static void unary_reply(struct rpc_slot *s, struct ccm_rpc_result *res) {
  int status = res->status;
  if (status < 0 || status >= CCM_STATUS_COUNT) status = CCM_EINTERNAL;
  if (status == CCM_OK && res->response == NULL) {
    ccm_error(LOGGER, "Handler of %s returned OK without a response", s->log_path);
    status = CCM_EINTERNAL;
  }
  const char *message = res->message;
  if (status != res->status || message == NULL) message = ccm_error_message(status);
  s->status = (grpc_status_code)ccm_error_grpc_status(status);
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (status == CCM_OK) {
    s->send_buf = pack_message(res->response);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = s->send_buf;
  } else {
    char retry[24];
    snprintf(retry, sizeof retry, "%d", res->retry_after_seconds);
    add_trailing(s, "ccm-error-reason", res->reason);
    add_trailing(s, "ccm-error-field", res->field);
    add_trailing(s, "retry-after", res->retry_after_seconds > 0 ? retry : NULL);
    s->status_details = grpc_slice_from_copied_string(message);
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = s->status;
  ops[n].data.send_status_from_server.status_details = &s->status_details;
  ops[n].data.send_status_from_server.trailing_metadata = s->trailing;
  ops[n++].data.send_status_from_server.trailing_metadata_count = s->trailing_count;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n++].data.recv_close_on_server.cancelled = &s->cancelled;
  s->phase = PHASE_UNARY_SENT;
  s->status_sent = true;
  atomic_store(&s->refs, 1);
  if (!slot_batch(s, ops, n, &s->main_tag)) {
    s->status = GRPC_STATUS_INTERNAL;
    slot_unref(s);
  }
}

/* Returns the ctx field a request metadata key fills, or NULL. */
static const char **ctx_field(struct ccm_rpc_ctx *ctx, grpc_slice key) {
  if (grpc_slice_str_cmp(key, "x-auth-token") == 0) return &ctx->auth_token;
  if (grpc_slice_str_cmp(key, "idempotency-key") == 0) return &ctx->idempotency_key;
  if (grpc_slice_str_cmp(key, "x-signature") == 0) return &ctx->signature;
  if (grpc_slice_str_cmp(key, "x-timestamp") == 0) return &ctx->signature_time;
  if (grpc_slice_str_cmp(key, "x-body-sha256") == 0) return &ctx->body_sha256;
  if (grpc_slice_str_cmp(key, "x-callback-body-bin") == 0) return &ctx->callback_body;
  return NULL;
}

/* Copies the known metadata into the ctx (first value of a key wins).
 * Returns CCM_OK, or an error set in *res for an over-long value (see the
 * file comment) or a full arena. */
static int read_metadata(struct rpc_slot *s, struct ccm_rpc_ctx *ctx, struct ccm_rpc_result *res) {
  for (size_t i = 0; i < s->metadata.count; i++) {
    const grpc_metadata *md = &s->metadata.metadata[i];
    const char **field = ctx_field(ctx, md->key);
    if (field == NULL || *field != NULL) continue;
    size_t len = GRPC_SLICE_LENGTH(md->value);
    size_t max = field == &ctx->callback_body ? CCM_SIGN_BODY_MAX : CCM_RPC_METADATA_MAX;
    if (len > max && field == &ctx->auth_token) continue; /* absent */
    if (len > max) {
      char *key = ccm_arena_strndup(&s->arena, (const char *)GRPC_SLICE_START_PTR(md->key),
                                    GRPC_SLICE_LENGTH(md->key));
      res->status = CCM_EINVAL;
      res->message = ccm_arena_printf(&s->arena, "Metadata %s is longer than %d bytes.",
                                      key != NULL ? key : "value", (int)max);
      res->reason = "invalid_field";
      res->field = key;
      return res->status;
    }
    *field = ccm_arena_strndup(&s->arena, (const char *)GRPC_SLICE_START_PTR(md->value), len);
    if (*field == NULL) {
      res->status = CCM_ENOMEM;
      return res->status;
    }
  }
  return CCM_OK;
}

/* Answers Health/Check through options->health; an unknown service is
 * NOT_FOUND. */
static void health_check(struct ccm_rpc_server *srv, struct ccm_rpc_ctx *ctx,
                         const ProtobufCMessage *request, struct ccm_rpc_result *out) {
  const Grpc__Health__V1__HealthCheckRequest *req =
      (const Grpc__Health__V1__HealthCheckRequest *)request;
  const char *service = req->service != NULL ? req->service : "";
  enum ccm_rpc_health h = CCM_RPC_SERVING;
  if (srv->opt.health != NULL) h = srv->opt.health(srv->opt.app, service);
  if (h != CCM_RPC_SERVING && h != CCM_RPC_NOT_SERVING) {
    out->status = CCM_ENOTFOUND;
    out->message = "Unknown service.";
    return;
  }
  Grpc__Health__V1__HealthCheckResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp == NULL) {
    out->status = CCM_ENOMEM;
    return;
  }
  grpc__health__v1__health_check_response__init(resp);
  resp->status = h == CCM_RPC_SERVING
                     ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  out->status = CCM_OK;
  out->response = &resp->base;
}

/* Runs a matched unary call (application method or health) on this worker
 * and answers it; errors become the status sent. */
static void unary_run(struct rpc_slot *s, struct rpc_worker *w) {
  struct ccm_rpc_server *srv = s->server;
  struct ccm_rpc_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.arena = &s->arena;
  ctx.method = s->method->path;
  ctx.deadline_ms = deadline_unix_ms(s->deadline);
  ctx.worker = w->index;
  ctx.worker_data = w->data;
  ctx.app = srv->opt.app;
  struct ccm_rpc_result res;
  memset(&res, 0, sizeof res);
  bool authless = s->method->kind == RPC_HEALTH; /* health reads no metadata */
  if (!authless && read_metadata(s, &ctx, &res) != CCM_OK) {
    unary_reply(s, &res);
    return;
  }
  if (ccm_rpc_time_left_ms(&ctx) <= 0) {
    res.status = CCM_ETIMEOUT;
    unary_reply(s, &res);
    return;
  }
  ProtobufCMessage *req = unpack_message(s->payload, s->method->request_descriptor, &s->arena);
  if (req == NULL) {
    res.status = CCM_EINVAL;
    res.message = "Invalid request message.";
    unary_reply(s, &res);
    return;
  }
  res.status = CCM_EINTERNAL;
  if (s->method->kind == RPC_HEALTH) {
    health_check(srv, &ctx, req, &res);
  } else {
    s->method->handler(&ctx, req, &res);
  }
  unary_reply(s, &res);
}

/* Answers a call to an unregistered method with UNIMPLEMENTED. */
static void unknown_run(struct rpc_slot *s) {
  size_t len = GRPC_SLICE_LENGTH(s->details.method);
  if (len > RPC_LOG_PATH_MAX) len = RPC_LOG_PATH_MAX;
  char *path =
      ccm_arena_strndup(&s->arena, (const char *)GRPC_SLICE_START_PTR(s->details.method), len);
  if (path != NULL) {
    for (char *p = path; *p != '\0'; p++) {
      if (*p < 0x20 || *p > 0x7e) *p = '?';
    }
    s->log_path = path;
  }
  s->deadline = s->details.deadline;
  s->status = GRPC_STATUS_UNIMPLEMENTED;
  s->status_details = grpc_slice_from_static_string("Method not found.");
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[1].data.send_status_from_server.status = s->status;
  ops[1].data.send_status_from_server.status_details = &s->status_details;
  ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[2].data.recv_close_on_server.cancelled = &s->cancelled;
  s->phase = PHASE_UNARY_SENT;
  s->status_sent = true;
  atomic_store(&s->refs, 1);
  if (!slot_batch(s, ops, 3, &s->main_tag)) slot_unref(s);
}

/* Ends a stream with a status; a failed start drops the main reference. */
static void stream_status(struct rpc_slot *s, grpc_status_code code, const char *message) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  s->status = code;
  s->status_sent = true;
  grpc_slice_unref(s->status_details);
  s->status_details = grpc_slice_from_static_string(message);
  op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  op.data.send_status_from_server.status = code;
  op.data.send_status_from_server.status_details = &s->status_details;
  s->phase = PHASE_STREAM_DONE;
  if (!slot_batch(s, &op, 1, &s->main_tag)) slot_unref(s);
}

/* Starts a reflection stream: RECV_CLOSE_ON_SERVER on its own tag, then
 * initial metadata with the first RECV_MESSAGE. */
static void stream_start(struct rpc_slot *s) {
  atomic_store(&s->refs, 2);
  grpc_op close_op;
  memset(&close_op, 0, sizeof close_op);
  close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  close_op.data.recv_close_on_server.cancelled = &s->cancelled;
  bool close_ok = slot_batch(s, &close_op, 1, &s->close_tag);
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_RECV_MESSAGE;
  ops[1].data.recv_message.recv_message = &s->payload;
  s->phase = PHASE_STREAM_READ;
  bool main_ok = slot_batch(s, ops, 2, &s->main_tag);
  if (!close_ok) slot_unref(s);
  if (!main_ok) slot_unref(s);
}

/* Continues a reflection stream after {(SEND_MESSAGE,) RECV_MESSAGE}: answers
 * the message, or ends with OK on half-close; a dead call is dropped. */
static void stream_on_read(struct rpc_slot *s, bool ok) {
  if (s->send_buf != NULL) grpc_byte_buffer_destroy(s->send_buf);
  s->send_buf = NULL;
  if (!ok) {
    slot_unref(s);
    return;
  }
  if (s->payload == NULL) {
    stream_status(s, GRPC_STATUS_OK, "");
    return;
  }
  ccm_arena_free(&s->arena);
  int rc = refl_answer(s->server, &s->arena, s->payload, &s->send_buf);
  grpc_byte_buffer_destroy(s->payload);
  s->payload = NULL;
  if (rc == CCM_EINVAL) {
    stream_status(s, GRPC_STATUS_INVALID_ARGUMENT, "Invalid request message.");
    return;
  }
  if (rc != CCM_OK) {
    stream_status(s, GRPC_STATUS_INTERNAL, "Internal server error.");
    return;
  }
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_MESSAGE;
  ops[0].data.send_message.send_message = s->send_buf;
  ops[1].op = GRPC_OP_RECV_MESSAGE;
  ops[1].data.recv_message.recv_message = &s->payload;
  if (!slot_batch(s, ops, 2, &s->main_tag)) slot_unref(s);
}

/* Handles a request completion: ok=0 means the server is shutting down (the
 * slot is re-armed or retired); otherwise the call is served. */
static void on_request(struct rpc_slot *s, struct rpc_worker *w, bool ok) {
  if (!ok) {
    grpc_metadata_array_destroy(&s->metadata);
    if (s->method->kind == RPC_UNKNOWN) grpc_call_details_destroy(&s->details);
    ccm_arena_free(&s->arena);
    if (s->call != NULL) grpc_call_unref(s->call);
    if (s->payload != NULL) grpc_byte_buffer_destroy(s->payload);
    slot_arm(s);
    return;
  }
  clock_gettime(CLOCK_MONOTONIC, &s->started);
  switch (s->method->kind) {
    case RPC_UNARY:
    case RPC_HEALTH:
      unary_run(s, w);
      break;
    case RPC_REFLECTION:
      stream_start(s);
      break;
    case RPC_UNKNOWN:
      unknown_run(s);
      break;
  }
}

/* Dispatches one completion-queue event to its slot. */
static void on_event(struct ccm_rpc_server *srv, struct rpc_worker *w, struct rpc_tag *tag,
                     bool ok) {
  if (tag->slot == NULL) {
    pthread_mutex_lock(&srv->mu);
    srv->notified = true;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    return;
  }
  struct rpc_slot *s = tag->slot;
  if (tag->is_close) {
    slot_unref(s);
    return;
  }
  switch (s->phase) {
    case PHASE_REQUESTED:
      on_request(s, w, ok);
      break;
    case PHASE_UNARY_SENT:
    case PHASE_STREAM_DONE:
      slot_unref(s);
      break;
    case PHASE_STREAM_READ:
      stream_on_read(s, ok);
      break;
    case PHASE_IDLE:
      ccm_error(LOGGER, "Completion for an idle slot of %s", s->method->path);
      break;
  }
}

/* A worker: creates its state, drains the queue until it shuts down. */
static void *worker_main(void *arg) {
  struct rpc_worker *w = arg;
  struct ccm_rpc_server *srv = w->server;
  if (srv->opt.worker_init != NULL) w->data = srv->opt.worker_init(srv->opt.app, w->index);
  pthread_mutex_lock(&srv->mu);
  srv->ready++;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    on_event(srv, w, ev.tag, ev.success != 0);
  }
  if (srv->opt.worker_free != NULL) srv->opt.worker_free(srv->opt.app, w->data);
  w->data = NULL;
  return NULL;
}

/* ---- creation ---------------------------------------------------------- */

/* Checks the options; CCM_EINVAL with a log line when unusable. */
static int check_options(const struct ccm_rpc_server_options *o) {
  if (o->listen_address == NULL || o->listen_address[0] == '\0') return CCM_EINVAL;
  if (o->workers < 1 || o->workers > RPC_MAX_WORKERS) return CCM_EINVAL;
  if (o->method_count > 0 && o->methods == NULL) return CCM_EINVAL;
  if (o->descriptor_set == NULL && o->descriptor_set_len > 0) return CCM_EINVAL;
  for (size_t i = 0; i < o->method_count; i++) {
    const struct ccm_rpc_method *m = &o->methods[i];
    if (m->path == NULL || m->path[0] != '/' || strchr(m->path + 1, '/') == NULL ||
        m->request_descriptor == NULL || m->handler == NULL) {
      ccm_error(LOGGER, "Invalid RPC method #%zu", i);
      return CCM_EINVAL;
    }
  }
  return CCM_OK;
}

/* Adds a method entry with a malloc'd copy of path; CCM_ENOMEM. */
static int add_method(struct ccm_rpc_server *srv, const char *path,
                      const ProtobufCMessageDescriptor *desc, ccm_rpc_handler handler,
                      enum rpc_kind kind) {
  struct rpc_method *m = &srv->methods[srv->n_methods];
  m->path = dup_string(path, strlen(path));
  if (m->path == NULL) return CCM_ENOMEM;
  m->request_descriptor = desc;
  m->handler = handler;
  m->kind = kind;
  srv->n_methods++;
  return CCM_OK;
}

/* Adds a service name to the list_services answer unless present. */
static int add_service(struct ccm_rpc_server *srv, const char *name, size_t len) {
  for (size_t i = 0; i < srv->n_services; i++) {
    if (strlen(srv->services[i]) == len && memcmp(srv->services[i], name, len) == 0) {
      return CCM_OK;
    }
  }
  char *copy = dup_string(name, len);
  if (copy == NULL) return CCM_ENOMEM;
  srv->services[srv->n_services++] = copy;
  return CCM_OK;
}

/* Builds the method table (app, health, reflection x2, catch-all) and the
 * service list; CCM_ENOMEM. */
static int build_methods(struct ccm_rpc_server *srv) {
  const struct ccm_rpc_server_options *o = &srv->opt;
  size_t total = o->method_count + 4;
  srv->methods = calloc(total, sizeof *srv->methods);
  srv->services = calloc(total, sizeof *srv->services);
  if (srv->methods == NULL || srv->services == NULL) return CCM_ENOMEM;
  int rc = CCM_OK;
  for (size_t i = 0; i < o->method_count && rc == CCM_OK; i++) {
    const struct ccm_rpc_method *m = &o->methods[i];
    rc = add_method(srv, m->path, m->request_descriptor, m->handler, RPC_UNARY);
    size_t service_len = (size_t)(strchr(m->path + 1, '/') - (m->path + 1));
    if (rc == CCM_OK) rc = add_service(srv, m->path + 1, service_len);
  }
  for (size_t i = 0; i < 3 && rc == CCM_OK; i++) {
    rc = add_service(srv, builtin_services[i], strlen(builtin_services[i]));
  }
  if (rc == CCM_OK) {
    rc = add_method(srv, HEALTH_PATH, &grpc__health__v1__health_check_request__descriptor, NULL,
                    RPC_HEALTH);
  }
  if (rc == CCM_OK) rc = add_method(srv, REFL_V1_PATH, NULL, NULL, RPC_REFLECTION);
  if (rc == CCM_OK) rc = add_method(srv, REFL_V1ALPHA_PATH, NULL, NULL, RPC_REFLECTION);
  if (rc == CCM_OK) rc = add_method(srv, "(unknown method)", NULL, NULL, RPC_UNKNOWN);
  return rc;
}

/* Creates the gRPC server (SO_REUSEPORT off, so a port in use fails), binds
 * and registers methods; CCM_EINVAL for a duplicate path, CCM_EIO when the
 * address cannot be bound. */
static int create_grpc_server(struct ccm_rpc_server *srv) {
  grpc_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
  arg.value.integer = 0;
  grpc_channel_args args = {1, &arg};
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  srv->server = grpc_server_create(&args, NULL);
  if (srv->cq == NULL || srv->server == NULL) return CCM_EINTERNAL;
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
  for (size_t i = 0; i < srv->n_methods; i++) {
    struct rpc_method *m = &srv->methods[i];
    if (m->kind == RPC_UNKNOWN) continue;
    grpc_server_register_method_payload_handling payload =
        m->kind == RPC_REFLECTION ? GRPC_SRM_PAYLOAD_NONE
                                  : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
    m->handle = grpc_server_register_method(srv->server, m->path, NULL, payload, 0);
    if (m->handle == NULL) {
      ccm_error(LOGGER, "Cannot register RPC method %s (duplicate?)", m->path);
      return CCM_EINVAL;
    }
  }
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(srv->server, srv->opt.listen_address, creds);
  grpc_server_credentials_release(creds);
  if (port == 0) {
    ccm_error(LOGGER, "Cannot listen on %s", srv->opt.listen_address);
    return CCM_EIO;
  }
  return CCM_OK;
}

/* Shuts down a server that has no workers running: notify, destroy, drain. */
static void teardown_unstarted(struct ccm_rpc_server *srv) {
  if (srv->server != NULL) {
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    for (;;) {
      grpc_event ev = grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
      if (ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->shutdown_tag) break;
      if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    }
    grpc_server_destroy(srv->server);
    srv->server = NULL;
  }
  if (srv->cq != NULL) {
    grpc_completion_queue_shutdown(srv->cq);
    grpc_event ev;
    do {
      ev = grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    } while (ev.type != GRPC_QUEUE_SHUTDOWN);
    grpc_completion_queue_destroy(srv->cq);
    srv->cq = NULL;
  }
}

/* See ccm_rpc.h: CCM_EINVAL (options, descriptor set, duplicate path),
 * CCM_EIO (bind), CCM_ENOMEM; *out stays NULL on error. */
int ccm_rpc_server_create(const struct ccm_rpc_server_options *options,
                          struct ccm_rpc_server **out) {
  if (out == NULL) return CCM_EINVAL;
  *out = NULL;
  if (options == NULL || check_options(options) != CCM_OK) return CCM_EINVAL;
  struct ccm_rpc_server *srv = calloc(1, sizeof *srv);
  if (srv == NULL) return CCM_ENOMEM;
  srv->opt = *options;
  srv->shutdown_tag.slot = NULL;
  atomic_init(&srv->stopping, false);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, &ca);
  pthread_condattr_destroy(&ca);
  grpc_init();
  int rc = build_methods(srv);
  srv->opt.methods = NULL; /* copied into srv->methods: the caller's may go */
  if (rc == CCM_OK)
    rc = refl_build(&srv->refl, options->descriptor_set, options->descriptor_set_len);
  if (rc == CCM_EINVAL) ccm_error(LOGGER, "The reflection descriptor set is malformed");
  srv->opt.descriptor_set = srv->refl.blob;
  if (rc == CCM_OK) rc = create_grpc_server(srv);
  if (rc != CCM_OK) {
    ccm_rpc_server_destroy(srv);
    return rc;
  }
  *out = srv;
  return CCM_OK;
}

/* ---- start, shutdown, destroy ------------------------------------------ */

/* Creates and arms every slot (live count first); CCM_ENOMEM. */
static int arm_all(struct ccm_rpc_server *srv) {
  size_t per = (size_t)srv->opt.workers;
  srv->slots = calloc(srv->n_methods * per, sizeof *srv->slots);
  if (srv->slots == NULL) return CCM_ENOMEM;
  srv->n_slots = srv->n_methods * per;
  pthread_mutex_lock(&srv->mu);
  srv->live = srv->n_slots;
  pthread_mutex_unlock(&srv->mu);
  for (size_t i = 0; i < srv->n_slots; i++) {
    struct rpc_slot *s = &srv->slots[i];
    s->server = srv;
    s->method = &srv->methods[i / per];
    s->main_tag.slot = s;
    s->close_tag.slot = s;
    s->close_tag.is_close = true;
    s->status_details = grpc_empty_slice();
    slot_arm(s);
  }
  return CCM_OK;
}

/* Waits until every slot is retired and the shutdown tag fired, up to
 * wait_ms (< 0: without limit, warning now and then); true when done. */
static bool wait_quiet(struct ccm_rpc_server *srv, int64_t wait_ms) {
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  pthread_mutex_lock(&srv->mu);
  while (srv->live > 0 || !srv->notified) {
    int64_t slice = wait_ms < 0 ? RPC_STUCK_LOG_MS : wait_ms - (int64_t)elapsed_ms(&start);
    if (slice <= 0) break;
    struct timespec until = ccm_time_deadline(CLOCK_MONOTONIC, slice);
    int rc = pthread_cond_timedwait(&srv->cv, &srv->mu, &until);
    if (rc == ETIMEDOUT && wait_ms < 0) {
      ccm_warn(LOGGER, "gRPC shutdown still waiting for %zu call(s)", srv->live);
    }
  }
  bool done = srv->live == 0 && srv->notified;
  pthread_mutex_unlock(&srv->mu);
  return done;
}

/* Stops a server whose workers run: see the file comment. */
static void stop_running(struct ccm_rpc_server *srv, int grace_ms) {
  atomic_store(&srv->stopping, true);
  grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
  if (!wait_quiet(srv, grace_ms < 0 ? 0 : grace_ms)) {
    ccm_info(LOGGER, "gRPC shutdown: grace period over, cancelling calls in progress");
    grpc_server_cancel_all_calls(srv->server);
    wait_quiet(srv, -1);
  }
  grpc_server_destroy(srv->server);
  srv->server = NULL;
  grpc_completion_queue_shutdown(srv->cq);
  for (int i = 0; i < srv->n_workers; i++) pthread_join(srv->workers[i].thread, NULL);
  srv->n_workers = 0;
  grpc_completion_queue_destroy(srv->cq);
  srv->cq = NULL;
  srv->state = STATE_STOPPED;
}

/* See ccm_rpc.h: CCM_EINVAL when not freshly created, CCM_EINTERNAL when
 * threads or slots cannot be created (the server is then stopped). */
int ccm_rpc_server_start(struct ccm_rpc_server *server) {
  if (server == NULL || server->state != STATE_CREATED) return CCM_EINVAL;
  int n = server->opt.workers;
  server->workers = calloc((size_t)n, sizeof *server->workers);
  if (server->workers == NULL) return CCM_EINTERNAL;
  for (int i = 0; i < n; i++) {
    struct rpc_worker *w = &server->workers[i];
    w->server = server;
    w->index = i;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) break;
    server->n_workers++;
  }
  if (server->n_workers == 0) {
    ccm_error(LOGGER, "Cannot start gRPC worker threads");
    return CCM_EINTERNAL;
  }
  server->state = STATE_STARTED;
  if (server->n_workers < n) {
    ccm_error(LOGGER, "Started only %d of %d gRPC worker threads", server->n_workers, n);
    pthread_mutex_lock(&server->mu);
    server->live = 0;
    pthread_mutex_unlock(&server->mu);
    stop_running(server, 0);
    return CCM_EINTERNAL;
  }
  pthread_mutex_lock(&server->mu); /* every worker_init done before serving */
  while (server->ready < server->n_workers) pthread_cond_wait(&server->cv, &server->mu);
  pthread_mutex_unlock(&server->mu);
  grpc_server_start(server->server);
  if (arm_all(server) != CCM_OK) {
    stop_running(server, 0);
    return CCM_EINTERNAL;
  }
  ccm_debug(LOGGER, "gRPC server listening on %s with %d workers", server->opt.listen_address, n);
  return CCM_OK;
}

/* See ccm_rpc.h; does nothing unless the server is running. */
void ccm_rpc_server_shutdown(struct ccm_rpc_server *server, int grace_ms) {
  if (server == NULL || server->state != STATE_STARTED) return;
  stop_running(server, grace_ms);
  ccm_debug(LOGGER, "gRPC server stopped");
}

/* See ccm_rpc.h; a running server is shut down first with no grace. */
void ccm_rpc_server_destroy(struct ccm_rpc_server *server) {
  if (server == NULL) return;
  if (server->state == STATE_STARTED) ccm_rpc_server_shutdown(server, 0);
  teardown_unstarted(server);
  for (size_t i = 0; i < server->n_methods; i++) free(server->methods[i].path);
  for (size_t i = 0; i < server->n_services; i++) free(server->services[i]);
  free(server->methods);
  free(server->services);
  free(server->slots);
  free(server->workers);
  refl_free(&server->refl);
  pthread_cond_destroy(&server->cv);
  pthread_mutex_destroy(&server->mu);
  free(server);
  grpc_shutdown();
}

/* See ccm_rpc.h; INT64_MAX when the call has no deadline (or ctx is NULL). */
int64_t ccm_rpc_time_left_ms(const struct ccm_rpc_ctx *ctx) {
  if (ctx == NULL || ctx->deadline_ms == INT64_MAX) return INT64_MAX;
  return ctx->deadline_ms - now_unix_ms();
}
