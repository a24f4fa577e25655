/*
 * deadline.c: the deadline heap (see deadline.h). Layer: utilities.
 * Thread: its owner's (the service thread).
 */
#include <stdlib.h>

#include "deadline.h"

static void swap(bs_deadlines_t *h, uint32_t a, uint32_t b)
{
    bs_deadline_t *t = h->v[a];

    h->v[a] = h->v[b];
    h->v[b] = t;
    h->v[a]->idx = a + 1;
    h->v[b]->idx = b + 1;
}

static void up(bs_deadlines_t *h, uint32_t i)
{
    while (i && h->v[(i - 1) / 2]->due > h->v[i]->due) {
        swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void down(bs_deadlines_t *h, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;

        if (l < h->len && h->v[l]->due < h->v[m]->due)
            m = l;
        if (r < h->len && h->v[r]->due < h->v[m]->due)
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

void bs_deadlines_remove(bs_deadlines_t *h, bs_deadline_t *d)
{
    uint32_t i;

    if (!d->idx)
        return;
    i = d->idx - 1;
    d->idx = 0;
    if (i != --h->len) {
        h->v[i] = h->v[h->len];
        h->v[i]->idx = i + 1;
        down(h, i);
        up(h, i);
    }
}

int bs_deadlines_add(bs_deadlines_t *h, bs_deadline_t *d, int64_t due)
{
    bs_deadlines_remove(h, d);
    if (h->len == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 256;
        bs_deadline_t **v = realloc(h->v, sizeof(*v) * cap);

        if (!v)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    d->due = due;
    h->v[h->len] = d;
    d->idx = ++h->len;
    up(h, h->len - 1);
    return 0;
}

void bs_deadlines_free(bs_deadlines_t *h)
{
    free(h->v);
    h->v = NULL;
    h->len = h->cap = 0;
}
