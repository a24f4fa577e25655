/*
 * bayeux_fuzz.c: libFuzzer harness for the Bayeux parser and protocol engine
 * (json.c, bayeux.c, and the registry and history below it). Built and run
 * by `rake fuzz`.
 *
 * The harness plays the transport: it owns two links, one HTTP and one
 * WebSocket, and gives the engine the ops the transports normally do, so
 * the engine runs exactly as in the server minus lws (and, like any single
 * node, without the backplane: no hiredis is linked). Engine state (clients,
 * channels, queues) persists across inputs, as it does across requests; a
 * sweep with a clock far ahead expires everything now and then, so memory
 * stays bounded.
 *
 * Input: byte 0 picks the link and whether to drain queues afterwards; the
 * rest is the request body, in which "$CID" stands for the id of the client
 * made by the latest handshake (the fuzzer could never guess a random one).
 * With bit 2 of byte 0 set, the rest is what the backplane hands up from
 * Redis instead ("<channel>\n<offset>\n<epoch>\n<frame>", split as
 * backplane.c does), fed to bs_engine_remote; with bit 3 as well, it is a
 * history load ("<channel>\n<offset>\n<epoch>\n" then "<offset> <frame>\n"
 * lines), fed to bs_engine_loaded: input from another process is fuzzed too.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bayeux.h"

static const char *const public_channels[] = { "/chat/**", NULL };
static const char *const signed_channels[] = { "/private/*", NULL };
static bs_server_config_t cfg = {
    .host = "127.0.0.1", .mount = "/faye", .timeout = 1, .secret = "fuzz-secret",
    .signed_channels = signed_channels, .public_channels = public_channels,
    .max_message_size = 65536, .max_depth = 32, .max_batch = 100,
    .max_subscriptions = 20, .max_queue = 50, .max_clients = 200, .max_channels = 500, .request_timeout = 10,
    .history_size = 10, .history_ttl = 300, .history_memory = 1 << 20, .log_fd = -1,
};
static bs_engine_t engine;
static bs_link_t links[2];
static unsigned long iterations;
static char last_id[BS_ID_LEN + 1];

static void remember_client(const bs_buf_t *out)
{
    static const char key[] = "\"clientId\":\"";
    const char *p = out->ptr, *end = out->ptr + out->len;

    while (p && (p = memmem(p, (size_t)(end - p), key, sizeof(key) - 1))) {
        p += sizeof(key) - 1;
        if (end - p > BS_ID_LEN && p[BS_ID_LEN] == '"')
            memcpy(last_id, p, BS_ID_LEN);
    }
}

/* Copies the body with every "$CID" replaced by last_id. */
static size_t expand(const uint8_t *in, size_t len, char *out)
{
    size_t i = 0, o = 0;

    while (i < len) {
        if (len - i >= 4 && memcmp(in + i, "$CID", 4) == 0 && last_id[0]) {
            memcpy(out + o, last_id, BS_ID_LEN);
            o += BS_ID_LEN;
            i += 4;
        } else {
            out[o++] = (char)in[i++];
        }
    }
    return o;
}

/* The engine's ops: the transport's part is played below; no backplane. */
static void op_wake(void *ctx, bs_link_t *l)
{
    (void)ctx;
    (void)l;
}

static void op_lost_client(void *ctx, bs_link_t *l, int close)
{
    (void)ctx;
    (void)close;
    bs_buf_reset(&l->out);
}

static const bs_engine_ops_t ops = { .wake = op_wake, .lost_client = op_lost_client };
static const bs_log_t no_log = { .fd = -1 };

/* What the transport does when it writes: answer due connects, empty queues. */
static void drain(bs_link_t *l)
{
    if (l->held)
        bs_engine_answer(&engine, l);
    if (l->client && l->client->link == l)
        bs_ring_drop(&l->client->queue, l->client->queue.len);
    bs_buf_reset(&l->out);
}

/* Splits off the text up to the next newline; NULL when there is none. */
static const char *field(const char **p, const char *end, size_t *len)
{
    const char *start = *p, *nl = memchr(start, '\n', (size_t)(end - start));

    if (!nl)
        return NULL;
    *len = (size_t)(nl - start);
    *p = nl + 1;
    return start;
}

static void from_redis(const char *p, size_t len, int load)
{
    const char *end = p + len, *ch, *off, *ep;
    size_t chlen, offlen, elen;
    char num[24];

    if (!(ch = field(&p, end, &chlen)) || !(off = field(&p, end, &offlen)) || !(ep = field(&p, end, &elen)) ||
        offlen >= sizeof(num))
        return;
    memcpy(num, off, offlen);
    num[offlen] = '\0';
    if (!load) {
        bs_engine_remote(&engine, ch, chlen, strtoull(num, NULL, 10), ep, elen, p, (size_t)(end - p));
        return;
    }
    {
        bs_loaded_t l = { .offset = strtoull(num, NULL, 10) };
        const char *line;
        size_t linelen;

        memcpy(l.epoch, ep, elen < BS_EPOCH_LEN ? elen : BS_EPOCH_LEN);
        while ((line = field(&p, end, &linelen))) {
            const char *sp = memchr(line, ' ', linelen);

            if (sp && bs_loaded_add(&l, strtoull(line, NULL, 10), sp + 1, (size_t)(line + linelen - sp - 1)))
                break;
        }
        bs_engine_loaded(&engine, ch, chlen, &l);
        bs_loaded_free(&l);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    bs_link_t *l;
    char *body;
    size_t n;

    if (!ready) {
        bs_engine_init(&engine, &cfg, &no_log, &ops, NULL);
        links[0].via = BS_VIA_HTTP;
        links[1].via = BS_VIA_WS;
        ready = 1;
    }
    if (size < 1 || size > cfg.max_message_size)
        return 0;
    if (data[0] & 4) {
        from_redis((const char *)data + 1, size - 1, data[0] & 8);
        return 0;
    }
    l = &links[data[0] & 1];
    /* Each "$CID" (4 bytes) grows to BS_ID_LEN bytes at most. */
    if (!(body = malloc(size * (BS_ID_LEN / 4) + 1)))
        return 0;
    n = expand(data + 1, size - 1, body);
    bs_engine_receive(&engine, l, body, n, &l->out);
    free(body);
    remember_client(&l->out);
    if (data[0] & 2)
        drain(l);
    if (l->out.len > (1u << 20))
        bs_buf_reset(&l->out);
    if (++iterations % 64 == 0) {
        drain(&links[0]);
        drain(&links[1]);
        bs_engine_sweep(&engine, bs_now_ms() + 3600 * 1000);
    }
    return 0;
}
