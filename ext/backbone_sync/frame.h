/*
 * frame.h: one encoded message shared by every subscriber, and the bounded
 * rings of frame pointers that queue deliveries (frame.c). Layer: frames,
 * above the utilities. Thread: the service thread; a publisher thread may
 * make a frame and hand it over whole. Reference counts are not atomic, so
 * a frame is never shared between threads.
 */
#ifndef BS_FRAME_H
#define BS_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Headroom before every outgoing buffer; at least LWS_PRE (server.c checks). */
#define BS_PRE 16

/* The bytes are '[' message ']', preceded by BS_PRE bytes of headroom so lws
 * can write a WebSocket header in place. Immutable once queued. */
typedef struct bs_frame {
    uint32_t refs;
    uint32_t len;
} bs_frame_t;

#define BS_FRAME_DATA(f) ((unsigned char *)((f) + 1) + BS_PRE)

/* Returns a frame of `len` uninitialised bytes with refs = 1, or NULL. */
bs_frame_t *bs_frame_new(size_t len);
void bs_frame_unref(bs_frame_t *f);

static inline void bs_frame_ref(bs_frame_t *f)
{
    f->refs++;
}

/* What a frame costs in memory, shared or not. */
static inline size_t bs_frame_cost(const bs_frame_t *f)
{
    return sizeof(*f) + BS_PRE + f->len;
}

/* A ring of frame pointers; grows on demand so idle clients cost nothing.
 * The bound is the caller's (max_queue). */
typedef struct bs_ring {
    bs_frame_t **v;
    uint32_t head;
    uint32_t len;
    uint32_t cap;
} bs_ring_t;

/* Returns 0, or -1 when memory runs out. Takes a reference on f. */
int bs_ring_push(bs_ring_t *r, bs_frame_t *f);
/* Drops the first n frames (their references). */
void bs_ring_drop(bs_ring_t *r, uint32_t n);
/* Drops every frame addressed to channel `name`, keeping the others' order. */
void bs_ring_remove_channel(bs_ring_t *r, const char *name, size_t len);
void bs_ring_free(bs_ring_t *r);

static inline bs_frame_t *bs_ring_at(const bs_ring_t *r, uint32_t i)
{
    return r->v[(r->head + i) & (r->cap - 1)];
}

#endif
