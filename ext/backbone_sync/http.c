/*
 * http.c: Bayeux over HTTP POST (long-polling, CORS, form bodies), the
 * browser client at <mount>.js and <mount>/client.js, GET /stats, and the
 * checks on a WebSocket upgrade. One request at a time per connection; a
 * request body has request_timeout to arrive. Layer: transports. Thread:
 * the service thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "transport.h"

enum route { R_NONE, R_BAYEUX, R_JS, R_STATS, R_PREFLIGHT, R_STATUS };

/* Copies header t into buf (NUL-terminated); its length, or -1 when absent or too long. */
static int header_copy(struct lws *wsi, enum lws_token_indexes t, char *buf, int size)
{
    int n = lws_hdr_copy(wsi, buf, size, t);

    return n < 0 ? -1 : n;
}

/*
 * CORS. Without allowed_origins any page may call us, but its cookies are
 * not asked for: nothing here is authorised by a cookie. With it, only
 * those origins are answered, with credentials. The WebSocket upgrade obeys
 * the same list.
 */
static int origin_listed(const bs_transport_t *t, const char *origin)
{
    const char *const *p;

    for (p = t->cfg->allowed_origins; p && *p; p++)
        if (strcmp(*p, origin) == 0)
            return 1;
    return 0;
}

/* Decodes the `message` field of a form body in place; returns its length or -1. */
static long form_message(char *body, size_t len)
{
    size_t i = 0, o = 0;
    char *field = NULL;

    while (i < len) {
        if ((i == 0 || body[i - 1] == '&') && len - i >= 8 && memcmp(body + i, "message=", 8) == 0) {
            field = body + i + 8;
            break;
        }
        i++;
    }
    if (!field)
        return -1;
    for (i = (size_t)(field - body); i < len && body[i] != '&'; i++) {
        char c = body[i];

        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < len) {
            char hex[3] = { body[i + 1], body[i + 2], 0 };
            char *end;
            long v = strtol(hex, &end, 16);

            if (*end)
                return -1;
            c = (char)v;
            i += 2;
        }
        body[o++] = c;
    }
    return (long)o;
}

static void http_status(bs_link_t *l, int status, const char *text)
{
    l->route = R_STATUS;
    l->status = status;
    bs_buf_reset(&l->out);
    bs_buf_append_str(&l->out, text);
    l->responding = 1;
}

/* A Bayeux error for the whole request, e.g. a body that is not JSON. */
static void bayeux_error(bs_transport_t *t, bs_link_t *l, const char *why)
{
    http_status(l, 400, "{\"successful\":false,\"error\":");
    bs_json_str(&l->out, why, strlen(why));
    bs_buf_append(&l->out, "}", 1);
    l->route = R_BAYEUX;
    BS_STAT_ADD(&t->engine->stats, errors, 1);
}

/*
 * Why a POST's body framing is refused, or NULL. One Content-Length, of
 * digits, above zero; no Transfer-Encoding (lws 4.1 would frame the body by
 * the Content-Length anyway, and a proxy in front by the chunks: request
 * smuggling). A garbled length lws reads as 0 is refused too.
 */
static const char *body_framing(struct lws *wsi)
{
    char cl[24];
    int n, i;

    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        return "400::Bad request: Transfer-Encoding is not accepted; send a Content-Length";
    if (lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, 1) > 0)
        return "400::Bad request: more than one Content-Length";
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return "400::Bad request: empty body";
    n = lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH);
    if (n <= 0 || n > 18)
        return "400::Bad request: bad Content-Length";
    for (i = 0; i < n; i++)
        if (cl[i] < '0' || cl[i] > '9')
            return "400::Bad request: bad Content-Length";
    if (strspn(cl, "0") == (size_t)n)
        return "400::Bad request: empty body";
    return NULL;
}

int bs_http_request(bs_transport_t *t, struct lws *wsi, bs_tlink_t *tl, const char *path)
{
    bs_link_t *l = &tl->core;
    size_t mlen = strlen(t->cfg->mount);
    char ctype[96], origin[256];
    const char *why;
    int post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    int options = lws_hdr_total_length(wsi, WSI_TOKEN_OPTIONS_URI) > 0;

    bs_transport_link_open(l, wsi, BS_VIA_HTTP);
    bs_buf_free(&l->rx);
    bs_buf_reset(&l->out);
    l->status = 200;
    l->responding = l->too_big = l->form = 0;
    l->route = R_NONE;
    /* Kept on the heap, and only by HTTP links: a held connect answers after
     * lws has let go of the headers, and a WebSocket needs none of it. */
    free(l->origin);
    l->origin = NULL;
    if (header_copy(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin)) > 0 && !(l->origin = strdup(origin)))
        return -1;

    if (strcmp(path, t->cfg->mount) == 0 || (strncmp(path, t->cfg->mount, mlen) == 0 && strcmp(path + mlen, "/") == 0)) {
        if (options) {
            l->route = R_PREFLIGHT;
            l->responding = 1;
        } else if (post) {
            l->route = R_BAYEUX;
            if (header_copy(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, ctype, sizeof(ctype)) > 0 &&
                strstr(ctype, "application/x-www-form-urlencoded"))
                l->form = 1;
            if ((why = body_framing(wsi))) {
                /* Framing we do not trust: a proxy in front may have read it
                 * another way, so nothing more is read on this connection. */
                bayeux_error(t, l, why);
                ((bs_tlink_t *)l)->close = 1;
            } else {
                /* The body follows, within request_timeout. */
                bs_transport_expect_body(t, (bs_tlink_t *)l, bs_now_ms() + (int64_t)t->cfg->request_timeout * 1000);
                return 0;
            }
        } else {
            bayeux_error(t, l, "400::Bad request: send Bayeux messages with POST");
        }
    } else if (t->js && (strcmp(path, t->js_path) == 0 || strcmp(path, t->js_path2) == 0)) {
        l->route = R_JS;
        l->responding = 1;
    } else if (strcmp(path, "/stats") == 0) {
        char auth[256];
        size_t slen = t->cfg->secret ? strlen(t->cfg->secret) : 0;
        int n = header_copy(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof(auth));

        if (slen && n == (int)(7 + slen) && strncmp(auth, "Bearer ", 7) == 0 &&
            CRYPTO_memcmp(auth + 7, t->cfg->secret, slen) == 0) {
            l->route = R_STATS;
            l->responding = 1;
        } else {
            http_status(l, 403, "{\"error\":\"send the server's secret as Authorization: Bearer <secret>\"}");
        }
    } else {
        http_status(l, 404, "{\"error\":\"not found\"}");
    }
    ((bs_tlink_t *)l)->busy = 1;
    lws_callback_on_writable(wsi);
    return 0;
}

/*
 * 1 when a body's first bytes are its own request line. lws 4.1 hands a POST
 * that was pipelined behind a request it had to answer first (it kept the
 * bytes meanwhile) to BODY from the start of those bytes, headers included;
 * no Bayeux body starts "POST <path> HTTP/1." (nor with any part of it: JSON
 * starts with a bracket or a blank, a form with "message=").
 */
static int body_is_request_line(struct lws *wsi, const char *in, size_t len)
{
    char line[560];
    int n = lws_hdr_copy(wsi, line + 5, (int)sizeof(line) - 20, WSI_TOKEN_POST_URI);

    if (n <= 0)
        return 0;
    memcpy(line, "POST ", 5);
    memcpy(line + 5 + n, " HTTP/1.", 8);
    n += 13;
    /* A short body holds only the start of it. */
    return len && memcmp(in, line, len < (size_t)n ? len : (size_t)n) == 0;
}

int bs_http_body(bs_transport_t *t, struct lws *wsi, bs_tlink_t *tl, const void *in, size_t len)
{
    bs_link_t *l = &tl->core;

    if (l->too_big)
        return 0;
    if (!l->rx.len && body_is_request_line(wsi, in, len)) {
        if (bs_log_verbose(t->log))
            bs_log(t->log, 'I', "pipelined HTTP request after an answered one: closing");
        return -1;
    }
    if (l->rx.len + len > t->cfg->max_message_size) {
        l->too_big = 1;
        bs_buf_free(&l->rx);
        return 0;
    }
    return bs_buf_append(&l->rx, in, len) ? -1 : 0;
}

/*
 * HTTP/1.1 pipelining. lws 4.1 keeps the bytes that follow a request and
 * offers them again on every loop turn; while a POST is unanswered it hands
 * them back as one more BODY_COMPLETION, consuming nothing, forever (and a
 * POST read from those kept bytes does the same even once the first request
 * is answered). Flow control does not help: lws stops writing to a link it
 * stopped reading. So a link that is offered a second request before it has
 * answered the first answers the first at once (a held connect early) and
 * closes: the client sends the rest again on a new connection, as HTTP
 * clients do when a pipelined connection closes.
 */

int bs_http_body_done(bs_transport_t *t, struct lws *wsi, bs_tlink_t *lk)
{
    bs_link_t *l = &lk->core;
    long len;

    /* A second request before this one's answer: pipelining (above). */
    bs_transport_body_in(t, lk);
    if (lk->busy) {
        if (bs_log_verbose(t->log))
            bs_log(t->log, 'I', "pipelined HTTP request: answering the first, then closing");
        if (l->held || l->responding)
            bs_http_write(t, wsi, lk, 1);
        return -1;
    }
    lk->busy = 1;
    if (l->route != R_BAYEUX)
        return 0;
    l->responding = 1;
    if (l->too_big) {
        char err[120];

        snprintf(err, sizeof(err), "400::Bad request: body larger than max_message_size (%zu bytes)",
                 t->cfg->max_message_size);
        bayeux_error(t, l, err);
        lws_callback_on_writable(wsi);
        return 0;
    }
    len = (long)l->rx.len;
    if (l->form && (len = form_message(l->rx.ptr, l->rx.len)) < 0) {
        bayeux_error(t, l, "400::Bad request: no message field in the form");
        lws_callback_on_writable(wsi);
        return 0;
    }
    l->status = bs_engine_receive(t->engine, l, l->rx.ptr, (size_t)len, &l->out);
    bs_buf_free(&l->rx);
    if (l->status != 200 || !l->held || bs_engine_due(t->engine, l, bs_now_ms())) {
        lws_callback_on_writable(wsi);
    } else {
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, t->cfg->timeout + 30);
        bs_transport_arm(t, l);
    }
    return 0;
}

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                      unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)value,
                                       (int)strlen(value), p, end);
}

static int http_respond(bs_transport_t *t, struct lws *wsi, bs_link_t *l, int status, const char *ctype,
                        unsigned char *body, size_t len)
{
    unsigned char hdr[LWS_PRE + 2048], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof(hdr) - 1;

    if (lws_add_http_common_headers(wsi, (unsigned int)status, ctype, len, &p, end) ||
        add_header(wsi, "cache-control:", "no-cache, no-store", &p, end))
        return -1;
    if (add_header(wsi, "vary:", "Origin", &p, end))
        return -1;
    if (l->origin && !t->cfg->allowed_origins &&
        add_header(wsi, "access-control-allow-origin:", l->origin, &p, end))
        return -1;
    if (l->origin && origin_listed(t, l->origin) &&
        (add_header(wsi, "access-control-allow-origin:", l->origin, &p, end) ||
         add_header(wsi, "access-control-allow-credentials:", "true", &p, end)))
        return -1;
    if (l->route == R_PREFLIGHT &&
        (add_header(wsi, "access-control-allow-methods:", "POST, GET", &p, end) ||
         add_header(wsi, "access-control-allow-headers:",
                    "Accept, Authorization, Content-Type, Pragma, X-Requested-With", &p, end) ||
         add_header(wsi, "access-control-max-age:", "86400", &p, end)))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    if (len && lws_write(wsi, body, len, LWS_WRITE_HTTP_FINAL) != (int)len)
        return -1;
    /* What the kernel would not take waits in lws; a reader that never
     * comes for it is cut off after request_timeout. */
    if (lws_partial_buffered(wsi))
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, t->cfg->request_timeout);
    __atomic_fetch_add(&t->conn->bytes_out, len + (size_t)(p - start), __ATOMIC_RELAXED);
    l->responding = 0;
    l->route = R_NONE;
    bs_buf_reset(&l->out);
    ((bs_tlink_t *)l)->busy = 0;
    if (((bs_tlink_t *)l)->close)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Writes the response due on l; a held connect only once due, unless now. */
int bs_http_write(bs_transport_t *t, struct lws *wsi, bs_tlink_t *tl, int now)
{
    bs_link_t *l = &tl->core;

    /* A subscribe in this request waits for its history: the whole answer does. */
    if (l->waiting && !now)
        return 0;

    if (l->held) {
        bs_client_t *c = l->client;

        if (!now && !bs_engine_due(t->engine, l, bs_now_ms()))
            return 0;
        /* The long-poll answer: the batch's replies with the connect's last,
         * then the deliveries, as Faye orders them. */
        c = c && c->link == l ? c : NULL;
        bs_engine_answer(t->engine, l);
        if (bs_tx_begin(t) || bs_buf_append(&t->tx, "[", 1) ||
            bs_buf_append(&t->tx, l->out.ptr, l->out.len))
            return -1;
        /* Bounded, as a WebSocket frame is: the rest waits for the next
         * connect, which is answered at once (a client that never reads
         * holds one such answer, not its whole queue). */
        if (c && c->queue.len)
            bs_tx_take_frames(t, c, BS_PRE + BS_LONGPOLL_BYTES, t->tx.len > BS_PRE + 1);
        if (bs_buf_append(&t->tx, "]", 1))
            return -1;
        return http_respond(t, wsi, l, 200, "application/json", (unsigned char *)t->tx.ptr + BS_PRE,
                            t->tx.len - BS_PRE);
    }
    if (!l->responding)
        return 0;
    switch (l->route) {
    case R_BAYEUX:
        if (bs_tx_begin(t) || bs_buf_append(&t->tx, "[", 1) ||
            bs_buf_append(&t->tx, l->out.ptr, l->out.len) || bs_buf_append(&t->tx, "]", 1))
            return -1;
        return http_respond(t, wsi, l, l->status, "application/json", (unsigned char *)t->tx.ptr + BS_PRE,
                            t->tx.len - BS_PRE);
    case R_JS:
        return http_respond(t, wsi, l, 200, "application/javascript; charset=utf-8", t->js + BS_PRE, t->js_len);
    case R_STATS:
        if (bs_tx_begin(t) || t->stats_json(t->stats_ctx, &t->tx))
            return -1;
        return http_respond(t, wsi, l, 200, "application/json", (unsigned char *)t->tx.ptr + BS_PRE,
                            t->tx.len - BS_PRE);
    case R_PREFLIGHT:
        return http_respond(t, wsi, l, 200, "text/plain", NULL, 0);
    default:
        break;
    }
    if (bs_tx_begin(t) || bs_buf_append(&t->tx, l->out.ptr, l->out.len))
        return -1;
    return http_respond(t, wsi, l, l->status, "application/json", (unsigned char *)t->tx.ptr + BS_PRE,
                        t->tx.len - BS_PRE);
}

unsigned int bs_http_upgrade_refusal(bs_transport_t *t, struct lws *wsi, const char *protocol)
{
    char path[512], origin[256];

    /* WebSocket only: an h2c upgrade would bring streams no check here sees. */
    if (!protocol || strcasecmp(protocol, "websocket") != 0)
        return HTTP_STATUS_FORBIDDEN;
    if (header_copy(wsi, WSI_TOKEN_GET_URI, path, sizeof(path)) <= 0 || strcmp(path, t->cfg->mount) != 0)
        return HTTP_STATUS_NOT_FOUND;
    if (t->cfg->allowed_origins && lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0 &&
        (header_copy(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin)) < 0 || !origin_listed(t, origin)))
        return HTTP_STATUS_FORBIDDEN;
    return 0;
}
