/*
 * buf.c: small containers. The growable byte buffer used by the JSON
 * encoders and by request reassembly, the intrusive hash table that keeps
 * clients, channels and histories, the intrusive list, and the item that
 * carries a message between threads. Layer: utilities. Thread: owned by
 * one thread at a time; no locking.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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

/*
 * SipHash-1-3 under a key drawn once per process: names and ids come from
 * clients, and with an unkeyed hash (FNV) one can pick thousands of channel
 * names that share a bucket and make every lookup walk them all.
 */
static uint64_t hash_key[2];
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void hash_init(void)
{
    if (getrandom(hash_key, sizeof(hash_key), 0) != (ssize_t)sizeof(hash_key)) {
        /* No kernel randomness: the clock still keeps the key unknown to a client. */
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        hash_key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15u ^ (uint64_t)getpid();
        hash_key[1] = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9u ^ (uintptr_t)&ts;
    }
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                        \
    do {                                                                                \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                      \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                          \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                          \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                      \
    } while (0)

uint32_t bs_hash(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    uint64_t v0, v1, v2, v3, m, b = (uint64_t)len << 56;
    size_t i, full = len & ~(size_t)7;

    pthread_once(&hash_once, hash_init);
    v0 = hash_key[0] ^ 0x736f6d6570736575u;
    v1 = hash_key[1] ^ 0x646f72616e646f6du;
    v2 = hash_key[0] ^ 0x6c7967656e657261u;
    v3 = hash_key[1] ^ 0x7465646279746573u;
    for (i = 0; i < full; i += 8) {
        memcpy(&m, p + i, 8);                   /* little-endian on every target here */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (i = 0; i < (len & 7); i++)
        b |= (uint64_t)p[full + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return (uint32_t)(v0 ^ v1 ^ v2 ^ v3);
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
    return bs_item_new_extra(kind, channel, chlen, data, len, NULL, 0);
}

bs_item_t *bs_item_new_extra(int kind, const char *channel, size_t chlen, const char *data, size_t len,
                             const char *extra, size_t xlen)
{
    bs_item_t *p = malloc(sizeof(*p) + chlen + 1 + len + (extra ? xlen + 1 : 0));

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
    if (extra) {
        p->extra = p->data + len;
        memcpy(p->extra, extra, xlen);
        p->extra[xlen] = '\0';
        p->xlen = xlen;
    }
    return p;
}
