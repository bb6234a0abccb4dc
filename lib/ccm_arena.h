/* A per-request arena: many small allocations released at once by
 * ccm_arena_free, so request handlers need no scattered frees. Blocks grow
 * up to a hard total limit. */
#ifndef CCM_ARENA_H
#define CCM_ARENA_H

#include <stddef.h>

struct ccm_arena_block;

struct ccm_arena {
  struct ccm_arena_block *head;
  size_t total; /* bytes allocated in blocks */
  size_t max;   /* hard limit on total */
};

/* Prepares an empty arena that will not grow beyond max bytes. */
void ccm_arena_init(struct ccm_arena *a, size_t max);
/* Releases every allocation of the arena; it is empty and reusable after. */
void ccm_arena_free(struct ccm_arena *a);
/* Returns size bytes aligned for any type, or NULL when out of memory or past
 * the arena's limit. The arena owns the memory. */
void *ccm_arena_alloc(struct ccm_arena *a, size_t size);
/* Returns zeroed memory; errors as ccm_arena_alloc. */
void *ccm_arena_calloc(struct ccm_arena *a, size_t count, size_t size);
/* Copies len bytes of s plus a NUL into the arena; NULL on error. */
char *ccm_arena_strndup(struct ccm_arena *a, const char *s, size_t len);
/* Copies a C string into the arena; NULL on error or when s is NULL. */
char *ccm_arena_strdup(struct ccm_arena *a, const char *s);
/* printf into the arena; NULL on error. */
char *ccm_arena_printf(struct ccm_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A ProtobufCAllocator whose memory comes from the arena, for unpacking
 * messages that are released with the arena. */
struct ProtobufCAllocator;
void ccm_arena_protobuf_allocator(struct ccm_arena *a, struct ProtobufCAllocator *out);

#endif
