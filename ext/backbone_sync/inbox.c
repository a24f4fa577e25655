/*
 * inbox.c: the cross-thread queue into the service thread (see inbox.h).
 * Layer: transports. Threads: any thread puts, the service thread takes;
 * every field is under `lock`.
 */
#include <stdlib.h>
#include <string.h>

#include "inbox.h"
#include "types.h"

void bs_inbox_init(bs_inbox_t *in, size_t max_items, size_t max_bytes, void (*wake)(void *), void *ctx)
{
    memset(in, 0, sizeof(*in));
    pthread_mutex_init(&in->lock, NULL);
    in->max_items = max_items;
    in->max_bytes = max_bytes;
    in->wake = wake;
    in->ctx = ctx;
}

void bs_inbox_destroy(bs_inbox_t *in)
{
    bs_item_t *p = bs_inbox_take(in), *next;

    for (; p; p = next) {
        next = p->next;
        free(p);
    }
    pthread_mutex_destroy(&in->lock);
}

void bs_inbox_set_open(bs_inbox_t *in, int open)
{
    pthread_mutex_lock(&in->lock);
    in->open = open;
    pthread_mutex_unlock(&in->lock);
}

int bs_inbox_put(bs_inbox_t *in, bs_item_t *p)
{
    pthread_mutex_lock(&in->lock);
    if (!in->open) {
        pthread_mutex_unlock(&in->lock);
        free(p);
        return BS_ESTOPPED;
    }
    if (p->kind == BS_INBOX_PUBLISH && (in->n >= in->max_items || in->bytes + p->len > in->max_bytes)) {
        pthread_mutex_unlock(&in->lock);
        free(p);
        return BS_EFULL;
    }
    if (in->tail)
        in->tail->next = p;
    else
        in->head = p;
    in->tail = p;
    in->n++;
    in->bytes += p->len;
    /* One wakeup per batch: the loop takes everything queued by then. */
    if (in->n == 1)
        in->wake(in->ctx);
    pthread_mutex_unlock(&in->lock);
    return BS_OK;
}

void bs_inbox_poke(bs_inbox_t *in)
{
    pthread_mutex_lock(&in->lock);
    if (in->open)
        in->wake(in->ctx);
    pthread_mutex_unlock(&in->lock);
}

bs_item_t *bs_inbox_take(bs_inbox_t *in)
{
    bs_item_t *p;

    pthread_mutex_lock(&in->lock);
    p = in->head;
    in->head = in->tail = NULL;
    in->n = in->bytes = 0;
    pthread_mutex_unlock(&in->lock);
    return p;
}
