/*
 * channels.c: channel names, the two-way subscription registry, fan-out
 * queues, and signed-subscription tokens.
 *
 * Thread: the service thread, except bs_channel_valid_* and bs_frame_new,
 * which any thread may call, and bs_token_verify, which is pure.
 *
 * Each channel keeps an array of members and each client an array of subs;
 * every entry records its index in the other array, so subscribe and
 * unsubscribe are O(1) and a channel disappears with its last member, as in
 * redis's pubsub.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "core.h"

/* ---- frames and rings ---------------------------------------------------- */

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

/* ---- names ---------------------------------------------------------------- */

static int seg_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '!' || c == '~' || c == '(' || c == ')' ||
           c == '$' || c == '@';
}

int bs_channel_valid_name(const char *s, size_t len)
{
    size_t i, seg = 0;

    if (len < 2 || s[0] != '/')
        return 0;
    for (i = 1; i < len; i++) {
        if (s[i] == '/') {
            if (seg == 0)
                return 0;
            seg = 0;
        } else if (seg_char((unsigned char)s[i])) {
            seg++;
        } else {
            return 0;
        }
    }
    return seg > 0;
}

/* Length of the literal part of a pattern ("/a/b" of "/a/b/" + "**"), or len. */
static size_t pattern_prefix(const char *s, size_t len, int *stars)
{
    *stars = 0;
    if (len >= 3 && memcmp(s + len - 3, "/**", 3) == 0) {
        *stars = 2;
        return len - 3;
    }
    if (len >= 2 && memcmp(s + len - 2, "/*", 2) == 0) {
        *stars = 1;
        return len - 2;
    }
    return len;
}

int bs_channel_valid_pattern(const char *s, size_t len)
{
    int stars;
    size_t pre = pattern_prefix(s, len, &stars);

    if (!stars)
        return bs_channel_valid_name(s, len);
    return pre == 0 || bs_channel_valid_name(s, pre);
}

int bs_channel_matches(const char *pattern, const char *name, size_t len)
{
    int stars;
    size_t plen = strlen(pattern), pre = pattern_prefix(pattern, plen, &stars);

    if (!stars)
        return plen == len && memcmp(pattern, name, len) == 0;
    if (len <= pre + 1 || memcmp(pattern, name, pre) != 0 || name[pre] != '/')
        return 0;
    if (stars == 2)
        return 1;
    return memchr(name + pre + 1, '/', len - pre - 1) == NULL;
}

int bs_channel_overlaps(const char *p, const char *s, size_t slen)
{
    int ps, ss;
    size_t plen = strlen(p), pp = pattern_prefix(p, plen, &ps), sp = pattern_prefix(s, slen, &ss);
    size_t n = pp < sp ? pp : sp;

    if (!ss)
        return bs_channel_matches(p, s, slen);
    if (!ps)
        return bs_channel_matches(s, p, plen) || (slen == plen && memcmp(s, p, plen) == 0);
    /* Two patterns overlap when one literal prefix is a segment prefix of the other. */
    if (memcmp(p, s, n) != 0)
        return 0;
    if (pp == sp)
        return 1;
    return (pp > sp ? p[sp] : s[pp]) == '/';
}

/* ---- tokens --------------------------------------------------------------- */

int bs_token_verify(const char *secret, const char *channel, size_t chlen,
                    const char *token, size_t toklen, int64_t now)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0, i;
    char hex[2 * EVP_MAX_MD_SIZE], msg[1024];
    const char *dot = memchr(token, '.', toklen);
    size_t explen, msglen;
    int64_t expires = 0;

    if (!secret || !*secret || !dot)
        return 0;
    explen = (size_t)(dot - token);
    if (explen == 0 || explen > 18 || chlen + 1 + explen > sizeof(msg))
        return 0;
    for (i = 0; i < explen; i++) {
        if (token[i] < '0' || token[i] > '9')
            return 0;
        expires = expires * 10 + (token[i] - '0');
    }
    if (expires < now)
        return 0;
    memcpy(msg, channel, chlen);
    msg[chlen] = '\n';
    memcpy(msg + chlen + 1, token, explen);
    msglen = chlen + 1 + explen;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)msg, msglen,
              mac, &maclen))
        return 0;
    for (i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    if (toklen - explen - 1 != 2 * (size_t)maclen)
        return 0;
    return CRYPTO_memcmp(hex, dot + 1, 2 * (size_t)maclen) == 0;
}

/* ---- the registry ----------------------------------------------------------- */

bs_channel_t *bs_channels_find(bs_engine_t *e, const char *name, size_t len)
{
    uint32_t h = bs_hash(name, len);
    bs_hnode_t *n;

    for (n = bs_table_chain(&e->channels, h); n; n = n->next) {
        bs_channel_t *c = (bs_channel_t *)n;

        if (n->hash == h && c->len == len && memcmp(c->name, name, len) == 0)
            return c;
    }
    return NULL;
}

static bs_channel_t *channel_create(bs_engine_t *e, const char *name, size_t len)
{
    bs_channel_t *c = calloc(1, sizeof(*c) + len + 1);
    int stars;

    if (!c)
        return NULL;
    c->name = (char *)(c + 1);
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    c->len = len;
    c->node.hash = bs_hash(name, len);
    if (bs_table_insert(&e->channels, &c->node)) {
        free(c);
        return NULL;
    }
    pattern_prefix(name, len, &stars);
    c->pattern = stars != 0;
    e->npatterns += (uint32_t)c->pattern;
    BS_STAT_ADD(e, channels, 1);
    return c;
}

static void channel_destroy(bs_engine_t *e, bs_channel_t *c)
{
    bs_history_release(e, c->name, c->len);
    bs_table_remove(&e->channels, &c->node);
    e->npatterns -= (uint32_t)c->pattern;
    BS_STAT_SUB(e, channels, 1);
    free(c->members);
    free(c);
}

bs_sub_t *bs_channels_subscribe(bs_engine_t *e, bs_client_t *cl, const char *name, size_t len)
{
    bs_channel_t *c = bs_channels_find(e, name, len);
    uint32_t i;

    if (c) {
        for (i = 0; i < cl->nsubs; i++)
            if (cl->subs[i].channel == c)
                return &cl->subs[i];
    } else if (!(c = channel_create(e, name, len))) {
        return NULL;
    }
    if (cl->nsubs == cl->subs_cap) {
        uint32_t cap = cl->subs_cap ? cl->subs_cap * 2 : 2;
        bs_sub_t *v = realloc(cl->subs, sizeof(*v) * cap);

        if (!v)
            goto fail;
        cl->subs = v;
        cl->subs_cap = cap;
    }
    if (c->nmembers == c->cap) {
        uint32_t cap = c->cap ? c->cap * 2 : 4;
        bs_member_t *v = realloc(c->members, sizeof(*v) * cap);

        if (!v)
            goto fail;
        c->members = v;
        c->cap = cap;
    }
    c->members[c->nmembers] = (bs_member_t){ .client = cl, .slot = cl->nsubs };
    cl->subs[cl->nsubs] = (bs_sub_t){ .channel = c, .pos = c->nmembers };
    c->nmembers++;
    cl->nsubs++;
    BS_STAT_ADD(e, subscriptions, 1);
    return &cl->subs[cl->nsubs - 1];
fail:
    if (c->nmembers == 0)
        channel_destroy(e, c);
    return NULL;
}

/* Removes cl's sub at index i from both arrays by moving each array's last
 * entry into the hole and fixing that entry's back index. */
static void unsubscribe_at(bs_engine_t *e, bs_client_t *cl, uint32_t i)
{
    bs_channel_t *c = cl->subs[i].channel;
    uint32_t pos = cl->subs[i].pos, last;

    last = --c->nmembers;
    if (pos != last) {
        c->members[pos] = c->members[last];
        c->members[pos].client->subs[c->members[pos].slot].pos = pos;
    }
    last = --cl->nsubs;
    if (i != last) {
        cl->subs[i] = cl->subs[last];
        cl->subs[i].channel->members[cl->subs[i].pos].slot = i;
    }
    BS_STAT_SUB(e, subscriptions, 1);
    if (c->nmembers == 0)
        channel_destroy(e, c);
}

void bs_channels_unsubscribe(bs_engine_t *e, bs_client_t *cl, const char *name, size_t len)
{
    uint32_t i;

    for (i = 0; i < cl->nsubs; i++) {
        if (cl->subs[i].channel->len == len && memcmp(cl->subs[i].channel->name, name, len) == 0) {
            unsubscribe_at(e, cl, i);
            return;
        }
    }
}

void bs_channels_unsubscribe_all(bs_engine_t *e, bs_client_t *cl)
{
    while (cl->nsubs)
        unsubscribe_at(e, cl, cl->nsubs - 1);
    free(cl->subs);
    cl->subs = NULL;
    cl->subs_cap = 0;
}

static void deliver_members(bs_engine_t *e, bs_channel_t *c, bs_frame_t *f, uint64_t offset)
{
    uint32_t i;

    for (i = 0; i < c->nmembers; i++) {
        bs_client_t *cl = c->members[i].client;

        if (offset) {
            bs_sub_t *sub = &cl->subs[c->members[i].slot];

            if (sub->floor >= offset)
                continue;
            sub->floor = offset;
        }
        if (cl->stamp == e->stamp)
            continue;
        cl->stamp = e->stamp;
        bs_engine_deliver(e, cl, f);
    }
}

void bs_channels_fanout(bs_engine_t *e, const char *name, size_t len, bs_frame_t *f, uint64_t offset)
{
    bs_channel_t *c;
    size_t i;

    e->stamp++;
    if ((c = bs_channels_find(e, name, len)))
        deliver_members(e, c, f, offset);
    if (!e->npatterns)
        return;
    /* "/a/b/c" is also reached through the patterns "/" "**", "/a/" "**",
     * "/a/b/" "**" and "/a/b/" "*". */
    bs_buf_reset(&e->scratch);
    if (bs_buf_reserve(&e->scratch, len + 4))
        return;
    memcpy(e->scratch.ptr, name, len);
    for (i = 0; i < len; i++) {
        if (name[i] != '/')
            continue;
        memcpy(e->scratch.ptr + i, "/**", 3);
        if ((c = bs_channels_find(e, e->scratch.ptr, i + 3)))
            deliver_members(e, c, f, 0);
        if (!memchr(name + i + 1, '/', len - i - 1) &&
            (c = bs_channels_find(e, e->scratch.ptr, i + 2)))
            deliver_members(e, c, f, 0);
        memcpy(e->scratch.ptr + i, name + i, len - i < 3 ? len - i : 3);
    }
}

void bs_channels_free(bs_engine_t *e)
{
    uint32_t i;

    for (i = 0; i < e->channels.size; i++) {
        bs_hnode_t *n = e->channels.buckets[i], *next;

        for (; n; n = next) {
            next = n->next;
            free(((bs_channel_t *)n)->members);
            free(n);
        }
    }
    bs_table_free(&e->channels);
    e->npatterns = 0;
}
