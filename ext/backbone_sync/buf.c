/*
 * buf.c: small containers. The growable byte buffer used by the JSON
 * encoders and by request reassembly, the intrusive hash table that keeps
 * clients, channels and histories, the intrusive list, and the item that
 * carries a message between threads. Layer: utilities. Thread: owned by
 * one thread at a time; no locking.
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"

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

void bs_dlist_push_front(bs_dlist_t *l, bs_dnode_t *n)
{
    bs_dlist_remove(l, n);
    n->linked = 1;
    n->prev = NULL;
    n->next = l->head;
    if (l->head)
        l->head->prev = n;
    l->head = n;
    if (!l->tail)
        l->tail = n;
}

void bs_dlist_append(bs_dlist_t *l, bs_dnode_t *n)
{
    bs_dlist_remove(l, n);
    n->linked = 1;
    n->next = NULL;
    n->prev = l->tail;
    if (l->tail)
        l->tail->next = n;
    l->tail = n;
    if (!l->head)
        l->head = n;
}

void bs_dlist_remove(bs_dlist_t *l, bs_dnode_t *n)
{
    if (!n->linked)
        return;
    n->linked = 0;
    if (n->prev)
        n->prev->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = NULL;
}

bs_item_t *bs_item_new(int kind, const char *channel, size_t chlen, const char *data, size_t len)
{
    bs_item_t *p = malloc(sizeof(*p) + chlen + 1 + len);

    if (!p)
        return NULL;
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->chlen = chlen;
    p->len = len;
    p->channel = (char *)(p + 1);
    memcpy(p->channel, channel, chlen);
    p->channel[chlen] = '\0';
    p->data = p->channel + chlen + 1;
    memcpy(p->data, data, len);
    return p;
}
