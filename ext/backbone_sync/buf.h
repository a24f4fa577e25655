/*
 * buf.h: small containers every layer uses: a growable byte buffer, an
 * intrusive hash table, an intrusive doubly linked list, and the item that
 * carries one message between threads (buf.c). Layer: utilities. Thread: a value belongs
 * to one thread at a time; nothing here locks.
 */
#ifndef BS_BUF_H
#define BS_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct bs_buf {
    char *ptr;
    size_t len;
    size_t cap;
} bs_buf_t;

void bs_buf_init(bs_buf_t *b);
/* Returns 0, or -1 when memory runs out (the buffer is left as it was). */
int bs_buf_reserve(bs_buf_t *b, size_t extra);
int bs_buf_append(bs_buf_t *b, const void *p, size_t n);
int bs_buf_append_str(bs_buf_t *b, const char *s);
void bs_buf_reset(bs_buf_t *b);
void bs_buf_free(bs_buf_t *b);

/* The first member of every struct kept in a table. */
typedef struct bs_hnode {
    struct bs_hnode *next;
    uint32_t hash;
} bs_hnode_t;

typedef struct bs_table {
    bs_hnode_t **buckets;
    uint32_t size;                         /* a power of two, or 0 */
    uint32_t count;
} bs_table_t;

uint32_t bs_hash(const char *s, size_t len);
/* Returns 0, or -1 when memory runs out (n is then not inserted). */
int bs_table_insert(bs_table_t *t, bs_hnode_t *n);
void bs_table_remove(bs_table_t *t, bs_hnode_t *n);
/* Frees the buckets only: the entries belong to their owners. */
void bs_table_free(bs_table_t *t);

/* The nodes that may hold `hash`: compare hash, then the key. */
static inline bs_hnode_t *bs_table_chain(const bs_table_t *t, uint32_t hash)
{
    return t->size ? t->buckets[hash & (t->size - 1)] : NULL;
}

/* An intrusive doubly linked list: the node is a member of what it links. */
typedef struct bs_dnode {
    struct bs_dnode *prev, *next;
    int linked;
} bs_dnode_t;

typedef struct bs_dlist {
    bs_dnode_t *head, *tail;
} bs_dlist_t;

void bs_dlist_push_front(bs_dlist_t *l, bs_dnode_t *n);
void bs_dlist_append(bs_dlist_t *l, bs_dnode_t *n);
/* Unlinks n if it is linked; a no-op otherwise. */
void bs_dlist_remove(bs_dlist_t *l, bs_dnode_t *n);

#define BS_CONTAINER(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* One message on its way from one thread to another: a channel and bytes,
 * in one allocation (inbox.c, backplane.c). */
typedef struct bs_item {
    struct bs_item *next;
    int kind;                              /* the queue's own tag */
    uint64_t offset;
    size_t chlen, len, elen;
    char epoch[17];                        /* BS_EPOCH_LEN + 1 */
    char *channel;                         /* NUL-terminated, stored after the struct */
    char *data;                            /* after the channel */
    char *extra;                           /* a second string after the data (an event id), or NULL */
    size_t xlen;
    void *ptr;                             /* anything else it carries (owned by the item's taker) */
} bs_item_t;

/* A zeroed item holding copies of channel and data; NULL on OOM. Free with free(). */
bs_item_t *bs_item_new(int kind, const char *channel, size_t chlen, const char *data, size_t len);
/* The same, with a copy of extra (NULL: none) stored after the data. */
bs_item_t *bs_item_new_extra(int kind, const char *channel, size_t chlen, const char *data, size_t len,
                             const char *extra, size_t xlen);

#endif
