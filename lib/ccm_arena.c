#include "ccm_arena.h"

#include <protobuf-c/protobuf-c.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_BLOCK_MIN 4096
#define ARENA_ALIGN 16

struct ccm_arena_block {
  struct ccm_arena_block *next;
  size_t used;
  size_t size;
  _Alignas(ARENA_ALIGN) unsigned char data[];
};

void ccm_arena_init(struct ccm_arena *a, size_t max) {
  a->head = NULL;
  a->total = 0;
  a->max = max;
}

void ccm_arena_free(struct ccm_arena *a) {
  struct ccm_arena_block *b = a->head;
  while (b != NULL) {
    struct ccm_arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
  a->total = 0;
}

void *ccm_arena_alloc(struct ccm_arena *a, size_t size) {
  if (size == 0) size = 1;
  if (size > SIZE_MAX - ARENA_ALIGN - sizeof(struct ccm_arena_block)) return NULL;
  size = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  struct ccm_arena_block *b = a->head;
  if (b == NULL || b->size - b->used < size) {
    size_t block = b != NULL ? b->size * 2 : ARENA_BLOCK_MIN;
    if (block < size) block = size;
    if (size > a->max || a->total > a->max - size) return NULL;
    if (block > a->max - a->total) block = a->max - a->total;
    b = malloc(sizeof *b + block);
    if (b == NULL) return NULL;
    b->next = a->head;
    b->used = 0;
    b->size = block;
    a->head = b;
    a->total += block;
  }
  void *p = b->data + b->used;
  b->used += size;
  return p;
}

void *ccm_arena_calloc(struct ccm_arena *a, size_t count, size_t size) {
  if (size != 0 && count > SIZE_MAX / size) return NULL;
  void *p = ccm_arena_alloc(a, count * size);
  if (p != NULL) memset(p, 0, count * size);
  return p;
}

char *ccm_arena_strndup(struct ccm_arena *a, const char *s, size_t len) {
  if (s == NULL) return NULL;
  char *p = ccm_arena_alloc(a, len + 1);
  if (p == NULL) return NULL;
  memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

char *ccm_arena_strdup(struct ccm_arena *a, const char *s) {
  return s == NULL ? NULL : ccm_arena_strndup(a, s, strlen(s));
}

char *ccm_arena_printf(struct ccm_arena *a, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char *p = ccm_arena_alloc(a, (size_t)n + 1);
  if (p == NULL) return NULL;
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

static void *arena_pb_alloc(void *data, size_t size) { return ccm_arena_alloc(data, size); }
static void arena_pb_free(void *data, void *ptr) {
  (void)data;
  (void)ptr; /* released with the arena */
}

void ccm_arena_protobuf_allocator(struct ccm_arena *a, ProtobufCAllocator *out) {
  out->alloc = arena_pb_alloc;
  out->free = arena_pb_free;
  out->allocator_data = a;
}
