/*
 * frame.c: shared frames and the rings that queue them. Layer: frames.
 * Thread: the service thread (see frame.h).
 */
#include <stdlib.h>
#include <string.h>

#include "frame.h"

bs_frame_t *bs_frame_new(size_t len)
{
    bs_frame_t *f;

    if (len > UINT32_MAX - BS_PRE)
        return NULL;
    f = malloc(sizeof(*f) + BS_PRE + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->len = (uint32_t)len;
    return f;
}

void bs_frame_unref(bs_frame_t *f)
{
    if (f && --f->refs == 0)
        free(f);
}

int bs_ring_push(bs_ring_t *r, bs_frame_t *f)
{
    if (r->len == r->cap) {
        uint32_t cap = r->cap ? r->cap * 2 : 4, i;
        bs_frame_t **v = malloc(sizeof(*v) * cap);

        if (!v)
            return -1;
        for (i = 0; i < r->len; i++)
            v[i] = bs_ring_at(r, i);
        free(r->v);
        r->v = v;
        r->head = 0;
        r->cap = cap;
    }
    r->v[(r->head + r->len) & (r->cap - 1)] = f;
    r->len++;
    bs_frame_ref(f);
    return 0;
}

void bs_ring_drop(bs_ring_t *r, uint32_t n)
{
    while (n-- && r->len) {
        bs_frame_unref(r->v[r->head]);
        r->head = (r->head + 1) & (r->cap - 1);
        r->len--;
    }
    /* An emptied ring gives its memory back: idle clients stay small. */
    if (r->len == 0 && r->cap > 64) {
        free(r->v);
        r->v = NULL;
        r->cap = 0;
        r->head = 0;
    }
}

/* Every frame starts [{"channel":"<name>" (names need no escaping). */
static int frame_for(const bs_frame_t *f, const char *name, size_t len)
{
    static const char head[] = "[{\"channel\":\"";
    const unsigned char *d = BS_FRAME_DATA(f);

    return f->len > sizeof(head) + len && memcmp(d, head, sizeof(head) - 1) == 0 &&
           memcmp(d + sizeof(head) - 1, name, len) == 0 && d[sizeof(head) - 1 + len] == '"';
}

void bs_ring_remove_channel(bs_ring_t *r, const char *name, size_t len)
{
    uint32_t i, kept = 0;

    for (i = 0; i < r->len; i++) {
        bs_frame_t *f = bs_ring_at(r, i);

        if (frame_for(f, name, len))
            bs_frame_unref(f);
        else
            r->v[(r->head + kept++) & (r->cap - 1)] = f;
    }
    r->len = kept;
}

void bs_ring_free(bs_ring_t *r)
{
    bs_ring_drop(r, r->len);
    free(r->v);
    memset(r, 0, sizeof(*r));
}
