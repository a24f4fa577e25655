/*
 * history.c: per-channel offsets, epochs and a bounded history of recent
 * messages, so a client that comes back can be given exactly what it missed.
 * Thread: the service thread only.
 *
 * Every exact channel that is published to, or subscribed to, has an epoch
 * (random, fixed for the life of its history) and a 64-bit offset that each
 * publish increments. The last history_size frames are kept, none older than
 * history_ttl seconds, and all channels together hold at most history_memory
 * bytes: past that, the channels published to least recently lose their
 * oldest entries first. A channel with no entries and no subscribers is
 * forgotten once idle; a client that asks for it later learns that its
 * history is gone (a new epoch) and refetches.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

static bs_entry_t *entry_at(const bs_history_t *h, uint32_t i)
{
    return &h->ring[(h->head + i) % h->cap];
}

bs_history_t *bs_history_find(bs_engine_t *e, const char *name, size_t len)
{
    uint32_t hv = bs_hash(name, len);
    bs_hnode_t *n;

    for (n = bs_table_chain(&e->histories, hv); n; n = n->next) {
        bs_history_t *h = (bs_history_t *)n;

        if (n->hash == hv && h->name_len == len && memcmp(h->name, name, len) == 0)
            return h;
    }
    return NULL;
}

static void lru_unlink(bs_engine_t *e, bs_history_t *h)
{
    if (!h->in_lru)
        return;
    h->in_lru = 0;
    if (h->lru_prev)
        h->lru_prev->lru_next = h->lru_next;
    else
        e->lru_head = h->lru_next;
    if (h->lru_next)
        h->lru_next->lru_prev = h->lru_prev;
    else
        e->lru_tail = h->lru_prev;
    h->lru_prev = h->lru_next = NULL;
}

static void lru_front(bs_engine_t *e, bs_history_t *h)
{
    if (e->lru_head == h)
        return;
    lru_unlink(e, h);
    h->in_lru = 1;
    h->lru_next = e->lru_head;
    if (e->lru_head)
        e->lru_head->lru_prev = h;
    e->lru_head = h;
    if (!e->lru_tail)
        e->lru_tail = h;
}

bs_history_t *bs_history_get(bs_engine_t *e, const char *name, size_t len)
{
    bs_history_t *h = bs_history_find(e, name, len);

    if (h)
        return h;
    if (!(h = calloc(1, sizeof(*h) + len + 1)))
        return NULL;
    h->node.hash = bs_hash(name, len);
    if (bs_random_id(e, h->epoch, BS_EPOCH_LEN) || bs_table_insert(&e->histories, &h->node)) {
        free(h);
        return NULL;
    }
    h->name = (char *)(h + 1);
    memcpy(h->name, name, len);
    h->name[len] = '\0';
    h->name_len = len;
    h->last_used = bs_now_ms();
    lru_front(e, h);
    return h;
}

static void drop_oldest(bs_engine_t *e, bs_history_t *h)
{
    bs_entry_t *x = entry_at(h, 0);

    h->bytes -= x->frame->len;
    e->hist_bytes -= x->frame->len;
    bs_frame_unref(x->frame);
    h->head = (h->head + 1) % h->cap;
    h->len--;
}

static void destroy(bs_engine_t *e, bs_history_t *h)
{
    while (h->len)
        drop_oldest(e, h);
    bs_table_remove(&e->histories, &h->node);
    lru_unlink(e, h);
    free(h->ring);
    free(h);
}

int bs_history_append(bs_engine_t *e, bs_history_t *h, bs_frame_t *f)
{
    uint32_t size = (uint32_t)e->cfg->history_size;

    if (!h->ring) {
        if (!(h->ring = malloc(sizeof(*h->ring) * size)))
            return -1;
        h->cap = size;
    }
    if (h->len == h->cap)
        drop_oldest(e, h);
    *entry_at(h, h->len) = (bs_entry_t){ .offset = h->offset, .at = bs_now_ms(), .frame = f };
    h->len++;
    bs_frame_ref(f);
    h->bytes += f->len;
    e->hist_bytes += f->len;
    h->last_used = bs_now_ms();
    lru_front(e, h);
    /* Over the global bound: the least recently published channels give up
     * their oldest entries first. */
    while (e->hist_bytes > e->cfg->history_memory && e->lru_tail) {
        bs_history_t *old = e->lru_tail;

        while (old->len && e->hist_bytes > e->cfg->history_memory)
            drop_oldest(e, old);
        if (e->hist_bytes > e->cfg->history_memory) {
            if (old == h)
                break;
            lru_unlink(e, old);     /* empty now: keep its offset, off the list */
        }
    }
    return 0;
}

void bs_history_reset(bs_engine_t *e, bs_history_t *h, const char *epoch, uint64_t offset)
{
    size_t n = strlen(epoch);

    while (h->len)
        drop_oldest(e, h);
    if (n > BS_EPOCH_LEN)
        n = BS_EPOCH_LEN;
    memcpy(h->epoch, epoch, n);
    h->epoch[n] = '\0';
    h->offset = offset;
}

void bs_history_put(bs_engine_t *e, bs_history_t *h, uint64_t offset, bs_frame_t *f)
{
    uint64_t last = h->len ? entry_at(h, h->len - 1)->offset : 0;
    uint64_t keep = h->offset;

    if (h->len && offset <= last)
        return;
    if (h->len && offset != last + 1) {
        /* The kept entries must be consecutive for replay to be exact. */
        while (h->len)
            drop_oldest(e, h);
    }
    h->offset = offset;
    bs_history_append(e, h, f);
    if (keep > h->offset)
        h->offset = keep;
}

int bs_history_replay(bs_engine_t *e, bs_history_t *h, uint64_t since, bs_client_t *c)
{
    uint32_t i;
    uint64_t oldest = h->len ? entry_at(h, 0)->offset : h->offset + 1;

    if (since > h->offset || since + 1 < oldest)
        return -1;                          /* ahead of us, or older than what we keep */
    for (i = 0; i < h->len; i++) {
        bs_entry_t *x = entry_at(h, i);

        if (x->offset > since)
            bs_engine_deliver(e, c, x->frame);
    }
    return 0;
}

void bs_history_sweep(bs_engine_t *e, int64_t now)
{
    int64_t ttl = (int64_t)e->cfg->history_ttl * 1000;
    uint32_t i;

    for (i = 0; i < e->histories.size; i++) {
        bs_hnode_t *n = e->histories.buckets[i], *next;

        for (; n; n = next) {
            bs_history_t *h = (bs_history_t *)n;

            next = n->next;
            while (h->len && now - entry_at(h, 0)->at > ttl)
                drop_oldest(e, h);
            if (!h->len && now - h->last_used > ttl && !bs_channels_find(e, h->name, h->name_len))
                destroy(e, h);
        }
    }
}

void bs_history_free_all(bs_engine_t *e)
{
    uint32_t i;

    for (i = 0; i < e->histories.size; i++)
        while (e->histories.buckets[i])
            destroy(e, (bs_history_t *)e->histories.buckets[i]);
    bs_table_free(&e->histories);
}
