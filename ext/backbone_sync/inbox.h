/*
 * inbox.h: the cross-thread queue that feeds the service thread (inbox.c):
 * in-process publishes from Ruby threads, and messages and resyncs from the
 * backplane thread. Bounded for publishes; what Redis already accepted is
 * never refused. Layer: transports. Threads: any thread puts; the service
 * thread takes. Everything in bs_inbox_t is under `lock`.
 */
#ifndef BS_INBOX_H
#define BS_INBOX_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum { BS_INBOX_PUBLISH, BS_INBOX_REMOTE, BS_INBOX_RESYNC, BS_INBOX_LOADED };

typedef struct bs_inbox {
    pthread_mutex_t lock;
    int open;                              /* the service thread takes items */
    bs_item_t *head, *tail;
    size_t n, bytes;
    size_t max_items, max_bytes;           /* the bound on publishes */
    void (*wake)(void *ctx);               /* called under the lock when the queue was empty */
    void *ctx;
} bs_inbox_t;

void bs_inbox_init(bs_inbox_t *in, size_t max_items, size_t max_bytes, void (*wake)(void *), void *ctx);
void bs_inbox_destroy(bs_inbox_t *in);
/* Opens or closes the inbox (under its lock, so that a put never wakes a
 * loop that is gone). Closing frees nothing: take what is left after. */
void bs_inbox_set_open(bs_inbox_t *in, int open);
/* Hands over an item (bs_item_new, kind BS_INBOX_*: a REMOTE one carries
 * offset and epoch, its data is a whole frame); returns BS_OK, or BS_ESTOPPED or BS_EFULL (the item is freed then). */
int bs_inbox_put(bs_inbox_t *in, bs_item_t *item);
/* Wakes the taker, if the inbox is open (stop uses it). */
void bs_inbox_poke(bs_inbox_t *in);
/* Everything queued, oldest first; the caller frees each item. */
bs_item_t *bs_inbox_take(bs_inbox_t *in);

#endif
