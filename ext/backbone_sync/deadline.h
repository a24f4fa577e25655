/*
 * deadline.h: a binary heap of deadlines, earliest first (deadline.c). The
 * transports keep one: held connects to answer and request bodies that must
 * be in. lws 4.1 keeps its own timers in one sorted list that every
 * (re)schedule walks, O(connections) each time; with the heap, one lws timer
 * is set to the earliest deadline. Layer: utilities. Thread: its owner's.
 */
#ifndef BS_DEADLINE_H
#define BS_DEADLINE_H

#include <stdint.h>

/* Embedded in whatever waits. */
typedef struct bs_deadline {
    int64_t due;                           /* ms */
    uint32_t idx;                          /* 1 + its place in the heap, or 0 when out */
} bs_deadline_t;

typedef struct bs_deadlines {
    bs_deadline_t **v;
    uint32_t len, cap;
} bs_deadlines_t;

/* Puts d in at `due` (moving it if it was in). 0, or -1 on OOM (d is then out). */
int bs_deadlines_add(bs_deadlines_t *h, bs_deadline_t *d, int64_t due);
void bs_deadlines_remove(bs_deadlines_t *h, bs_deadline_t *d);
/* The earliest, or NULL. */
static inline bs_deadline_t *bs_deadlines_top(const bs_deadlines_t *h)
{
    return h->len ? h->v[0] : NULL;
}
void bs_deadlines_free(bs_deadlines_t *h);

#endif
