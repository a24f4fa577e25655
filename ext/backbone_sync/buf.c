/*
 * buf.c: small containers. The growable byte buffer used by the JSON
 * encoders and by request reassembly, and the intrusive hash table that
 * keeps clients, channels and histories. Owned by one thread at a time; no
 * locking.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

void bs_buf_init(bs_buf_t *b)
{
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
}

int bs_buf_reserve(bs_buf_t *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > SIZE_MAX - b->len)
        return -1;
    need = b->len + extra;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->ptr, cap);
    if (!p)
        return -1;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

int bs_buf_append(bs_buf_t *b, const void *p, size_t n)
{
    if (bs_buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

int bs_buf_append_str(bs_buf_t *b, const char *s)
{
    return bs_buf_append(b, s, strlen(s));
}

void bs_buf_reset(bs_buf_t *b)
{
    b->len = 0;
}

void bs_buf_free(bs_buf_t *b)
{
    free(b->ptr);
    bs_buf_init(b);
}

/* FNV-1a: short keys (client ids, channel names), good spread, no setup. */
uint32_t bs_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    size_t i;

    for (i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Keeps at most one entry per bucket on average: doubles when full. */
static int table_grow(bs_table_t *t)
{
    uint32_t size = t->size ? t->size * 2 : 64, i;
    bs_hnode_t **b = calloc(size, sizeof(*b)), *n, *next;

    if (!b)
        return -1;
    for (i = 0; i < t->size; i++) {
        for (n = t->buckets[i]; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (size - 1)];
            b[n->hash & (size - 1)] = n;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->size = size;
    return 0;
}

int bs_table_insert(bs_table_t *t, bs_hnode_t *n)
{
    bs_hnode_t **head;

    if (t->count >= t->size && table_grow(t))
        return -1;
    head = &t->buckets[n->hash & (t->size - 1)];
    n->next = *head;
    *head = n;
    t->count++;
    return 0;
}

void bs_table_remove(bs_table_t *t, bs_hnode_t *n)
{
    bs_hnode_t **pp = &t->buckets[n->hash & (t->size - 1)];

    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    t->count--;
}

/* Frees the buckets only: the entries belong to their owners. */
void bs_table_free(bs_table_t *t)
{
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}
