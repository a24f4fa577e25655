/*
 * transport_fuzz.c: libFuzzer harness for the transports (server.c over
 * libwebsockets, with the whole core behind it). Built and run by
 * `rake fuzz:transport`.
 *
 * The real server runs in its own service thread on 127.0.0.1, started once
 * through the C API (backbone_sync.h), exactly as ruby_server.c starts it.
 * Each input is written over a fresh loopback TCP connection, in the chunks
 * it asks for; what the server answers is read and checked (HTTP bodies and
 * WS text must be UTF-8; a frame that must fail the connection must get it
 * closed), then dropped. A watcher, a WebSocket client subscribed to
 * /chat/ and below, stays connected throughout and checks what is fanned out
 * to it. After every input a fresh connection must get a well-formed answer
 * to a Bayeux handshake within LIVENESS_MS, and every LEAK_EVERY inputs the
 * server's `connections` stat must come back to its baseline. Any failure
 * aborts, so libFuzzer keeps the input as a crash. Threads: libFuzzer's (the
 * client side) and the server's service thread; they share only sockets and
 * bs_server_stats().
 *
 * Input: a header, then the stream.
 *   byte 0  flags: F_WS        upgrade to WebSocket first (the harness does
 *                              the handshake), then the stream is raw
 *                              post-handshake bytes: frame headers, masks
 *                              and all;
 *                  F_RST       close with RST (SO_LINGER 0), not FIN;
 *                  F_NOWAIT    hang up without waiting for the answer;
 *                  F_PAUSE     pause about 1 ms between chunks, so they
 *                              arrive as separate reads;
 *                  F_HALFCLOSE shut the write side down after the stream;
 *                  F_TWICE     send the stream twice, back to back, as a
 *                              client that pipelines requests or messages;
 *                  F_INPROC    publish to /chat/inproc through the C API,
 *                              from this thread, as Ruby does, while the
 *                              stream is on its way.
 *   byte 1  low 3 bits: k, the number of split points;
 *   k bytes chunk lengths (value + 1); the last chunk is the rest.
 * In the stream, CID_PLACEHOLDER (32 bytes, as long as a clientId) stands
 * for the clientId the latest liveness handshake got, so lengths stay right
 * (a WS frame carrying it needs the mask key 0). The fuzzer could never
 * guess a live id.
 *
 * `transport_fuzz -write_seeds=DIR` writes the hand-made seeds (the WS
 * frames built by ws_frame below) into DIR and exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backbone_sync.h"

#define F_WS 0x01
#define F_RST 0x02
#define F_NOWAIT 0x04                      /* hang up at once: do not wait for the answer */
#define F_PAUSE 0x08
#define F_HALFCLOSE 0x10
#define F_TWICE 0x20                       /* the stream twice, back to back: pipelining */
#define F_INPROC 0x40                      /* an in-process publish (bs_server_publish) too */

#define CID_PLACEHOLDER "$CID$CID$CID$CID$CID$CID$CID$CID"
#define CID_LEN 32                         /* BS_ID_LEN (bayeux.h) */

#define MAX_MESSAGE 65536                  /* the server's max_message_size */
#define LIVENESS_MS 2000                   /* generous: ASan, and a machine shared with others */
#define LEAK_MS 2000
#define LEAK_EVERY 32
#define SEND_MS 50                         /* a server that stops reading costs this at most */
#define ANSWER_FIRST_MS 20                 /* the first byte of an answer */
#define ANSWER_QUIET_MS 3                  /* then: silence that ends it */
#define ANSWER_MAX_MS 60

_Static_assert(sizeof(CID_PLACEHOLDER) - 1 == CID_LEN, "the placeholder must be as long as an id");

static const char *const public_channels[] = { "/chat/**", "/**", NULL };
static const char *const signed_channels[] = { "/private/*", NULL };
static const char *const allowed_origins[] = { "http://example.com", NULL };
static const char secret[] = "fuzz-secret";
static const char client_js[] = "/* the browser client would be here */ window.Faye = {};\n";

static bs_server_t *server;
static int port;
static uint64_t baseline;                  /* connections with none of ours open */
static unsigned long inputs;
static char last_id[CID_LEN + 1];
static int verbose;                        /* TRANSPORT_FUZZ_VERBOSE=1: show what the server answers */

/* What the server answered on the input's connection, for the checks. */
#define ANSWER_CAP (256u << 10)            /* past this, the rest is dropped */
static uint8_t answer[ANSWER_CAP];
static size_t answer_len;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((noreturn)) static void die(const char *what, const char *detail)
{
    fprintf(stderr, "transport_fuzz: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

/* ---- sockets ------------------------------------------------------------------ */

/* A non-blocking connected socket, or -1 (errno set) after timeout_ms. */
static int dial(int timeout_ms)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1, err = 0;
    socklen_t elen = sizeof(err);
    struct pollfd p;

    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        return fd;
    if (errno != EINPROGRESS)
        goto fail;
    p = (struct pollfd){ .fd = fd, .events = POLLOUT };
    if (poll(&p, 1, timeout_ms) != 1) {
        errno = ETIMEDOUT;
        goto fail;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) || err) {
        errno = err ? err : errno;
        goto fail;
    }
    return fd;
fail:
    err = errno;
    close(fd);
    errno = err;
    return -1;
}

static void hang_up(int fd, int rst)
{
    if (rst) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };

        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
}

/* Reads what is there into buf (or, when buf is NULL, into `answer`). Returns
 * bytes read, 0 at EOF or error, -1 when nothing is there yet. */
static ssize_t take(int fd, char *buf, size_t cap)
{
    char sink[4096];
    ssize_t n = recv(fd, buf ? buf : sink, buf ? cap : sizeof(sink), 0);

    if (n > 0 && !buf) {
        size_t keep = (size_t)n < ANSWER_CAP - answer_len ? (size_t)n : ANSWER_CAP - answer_len;

        memcpy(answer + answer_len, sink, keep);
        answer_len += keep;
        if (verbose && fwrite(sink, 1, (size_t)n, stderr))
            fputs("\n", stderr);
    }
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : 0;
    return n;
}

/* Writes it all, dropping what the server answers meanwhile so neither side
 * stalls on a full buffer. Returns 0, or -1 when the server hung up or would
 * not take the bytes before the deadline. */
static int send_all(int fd, const uint8_t *p, size_t len, int64_t deadline)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        struct pollfd pf = { .fd = fd, .events = POLLIN | POLLOUT };
        int64_t left;

        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if ((left = deadline - now_ms()) <= 0 || poll(&pf, 1, (int)left) <= 0)
            return -1;
        if ((pf.revents & POLLIN) && take(fd, NULL, 0) == 0)
            return -1;
    }
    return 0;
}

/* Drops the answer: waits up to first_ms for it to begin, then until it has
 * been quiet for quiet_ms, EOF, or max_ms in all. Returns 1 at EOF. */
static int drain(int fd, int first_ms, int quiet_ms, int max_ms)
{
    int64_t start = now_ms(), last = -1;

    for (;;) {
        int64_t t = now_ms(), wait;
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        ssize_t n;

        while ((n = take(fd, NULL, 0)) > 0)
            last = t;
        if (n == 0)
            return 1;
        wait = last < 0 ? start + first_ms - t : last + quiet_ms - t;
        if (wait > start + max_ms - t)
            wait = start + max_ms - t;
        if (wait <= 0 || poll(&pf, 1, (int)wait) <= 0)
            return 0;
    }
}

/* Reads until buf holds `until` (or, with want_body, the whole body that
 * Content-Length announces after it). Returns bytes held, -1 on timeout or
 * hang-up first. */
static ssize_t read_reply(int fd, char *buf, size_t cap, const char *until, int want_body, int64_t deadline)
{
    size_t len = 0;

    for (;;) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        char *end;
        ssize_t n;
        int64_t left;

        buf[len] = '\0';
        if ((end = strstr(buf, until))) {
            const char *cl = strcasestr(buf, "\r\ncontent-length:");
            size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;

            if (!want_body || (size_t)(end + strlen(until) - buf) + body <= len)
                return (ssize_t)len;
        }
        if (len == cap - 1)
            return -1;
        n = take(fd, buf + len, cap - 1 - len);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n == 0 || (left = deadline - now_ms()) <= 0 || poll(&pf, 1, (int)left) <= 0)
            return -1;
    }
}

/* ---- what a correct server does ---------------------------------------------------- */

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past
 * U+10FFFF. Every answer is JSON or JavaScript, so all of it must pass.
 * With tail_ok, a sequence cut short at the end passes: we may have stopped
 * reading in the middle of it. */
static int utf8_valid(const uint8_t *p, size_t len, int tail_ok)
{
    size_t i = 0;

    while (i < len) {
        uint8_t c = p[i];
        size_t n, j;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return 0;
        if (len - i <= n)
            return tail_ok;
        for (j = 1; j <= n; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

static const char *ws_answer_wrong(const uint8_t *p, size_t len);

/* The bodies of the HTTP answers must be UTF-8. Headers are octets: the
 * Origin a client sent comes back as it was, in access-control-allow-origin. */
static const char *http_answer_wrong(const uint8_t *p, size_t len)
{
    while (len) {
        const uint8_t *end = memmem(p, len, "\r\n\r\n", 4), *cl;
        size_t head, body = len;

        if (!end)
            return NULL;
        head = (size_t)(end - p) + 4;
        if (len >= 13 && memcmp(p, "HTTP/1.1 101 ", 13) == 0)
            return ws_answer_wrong(p + head, len - head);  /* upgraded in the stream */
        for (cl = p; (cl = memmem(cl, head - (size_t)(cl - p), "\r\ncontent-length:", 17)); cl += 17)
            body = strtoul((const char *)cl + 17, NULL, 10);
        if (body > len - head)
            body = len - head;
        if (!utf8_valid(p + head, body, 1))
            return "invalid UTF-8 in the body of an HTTP answer";
        p += head + body;
        len -= head + body;
    }
    return NULL;
}

/* Parses a frame header at p: returns its length (header and mask key), or
 * 0 when incomplete; *plen is the declared payload length. */
static size_t ws_header(const uint8_t *p, size_t len, uint64_t *plen, int *masked)
{
    size_t h = 2, i;

    if (len < 2)
        return 0;
    *masked = p[1] >> 7;
    *plen = p[1] & 0x7f;
    if (*plen == 126)
        h = 4;
    else if (*plen == 127)
        h = 10;
    if (len < h + (*masked ? 4 : 0))
        return 0;
    if (h > 2)
        for (*plen = 0, i = 2; i < h; i++)
            *plen = *plen << 8 | p[i];
    return h + (*masked ? 4 : 0);
}

/* The server's WebSocket frames: every unfragmented text message, and the
 * reason of a close, must be UTF-8. Returns what is wrong, or NULL. */
static const char *ws_answer_wrong(const uint8_t *p, size_t len)
{
    while (len) {
        uint64_t plen;
        int masked;
        size_t h = ws_header(p, len, &plen, &masked);
        uint8_t op = p[0] & 0x0f;

        if (!h || plen > len - h)
            return NULL;                   /* cut short: we hung up, or past ANSWER_CAP */
        if (masked)
            return "a masked frame from the server";
        if (op == 1 && (p[0] & 0x80) && !utf8_valid(p + h, (size_t)plen, 0))
            return "invalid UTF-8 in a text message from the server";
        if (op == 8 && plen > 2 && !utf8_valid(p + h + 2, (size_t)plen - 2, 0))
            return "invalid UTF-8 in a close reason from the server";
        p += h + plen;
        len -= h + (size_t)plen;
    }
    return NULL;
}

/* The first frame of the client's stream that the server must fail the
 * connection for as soon as it has read its header (RFC 6455 10.4): one
 * declaring more than max_message_size. NULL if none. An unmasked frame
 * ends the scan: the server accepts it, since libwebsockets 4.1 keeps the
 * mask bit private (README, Limits), and what follows is then its own. */
static const char *ws_stream_violation(const uint8_t *p, size_t len)
{
    while (len) {
        uint64_t plen;
        int masked;
        size_t h = ws_header(p, len, &plen, &masked);

        if (!h)
            return NULL;
        if (!masked)
            return NULL;
        if (plen > MAX_MESSAGE)
            return "frame declaring more than max_message_size not refused at its header";
        if (plen >= len - h)
            return NULL;
        p += h + plen;
        len -= h + (size_t)plen;
    }
    return NULL;
}

/* Whether the server's frames in `answer` include a close. */
static int ws_answer_closes(void)
{
    const uint8_t *p = answer;
    size_t len = answer_len;

    while (len) {
        uint64_t plen;
        int masked;
        size_t h = ws_header(p, len, &plen, &masked);

        if (!h || plen > len - h)
            return 0;
        if ((p[0] & 0x0f) == 8)
            return 1;
        p += h + plen;
        len -= h + (size_t)plen;
    }
    return 0;
}

/* After a violation the server must fail the connection within
 * LIVENESS_MS: send a close frame (it may then wait for ours) or hang up. */
static int closes_soon(int fd)
{
    int64_t deadline = now_ms() + LIVENESS_MS;

    while (now_ms() < deadline) {
        if (drain(fd, 20, 20, 20) || ws_answer_closes())
            return 1;
    }
    return 0;
}

/* ---- WebSocket frames ------------------------------------------------------------ */

/* Writes one frame into out (room: len + 14) and returns its length. A mask
 * key of 0 leaves the payload readable, as the placeholder needs. */
static size_t ws_frame(uint8_t *out, int fin, int opcode, int masked, uint32_t key, const void *payload,
                       size_t len)
{
    size_t o = 0, i;

    out[o++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[o++] = (uint8_t)((masked ? 0x80 : 0) | len);
    } else if (len < 65536) {
        out[o++] = (uint8_t)((masked ? 0x80 : 0) | 126);
        out[o++] = (uint8_t)(len >> 8);
        out[o++] = (uint8_t)len;
    } else {
        out[o++] = (uint8_t)((masked ? 0x80 : 0) | 127);
        for (i = 0; i < 8; i++)
            out[o++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    if (masked) {
        for (i = 0; i < 4; i++)
            out[o++] = (uint8_t)(key >> (24 - 8 * i));
    }
    for (i = 0; i < len; i++)
        out[o + i] = ((const uint8_t *)payload)[i] ^ (masked ? (uint8_t)(key >> (24 - 8 * (i % 4))) : 0);
    return o + len;
}

static const char ws_upgrade[] =
    "GET /faye HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/* ---- the watcher: a WebSocket subscriber to /chat/ and below ----------------------- */

/*
 * One well-behaved client stays connected across inputs, subscribed to
 * /chat/ and everything below it (a client may not take every channel), so
 * what the inputs publish there is fanned out to a live socket (the writable
 * path, batching, queues) and checked on arrival: every text message must be
 * UTF-8. It sends a /meta/connect every WATCH_CONNECT_MS so its session
 * never expires, answers pings, and starts over when the server
 * hangs up on it or forgets it.
 */
#define WATCH_CONNECT_MS 600
#define WATCH_BUF (256u << 10)

static int watch_fd = -1;
static uint8_t watch_buf[WATCH_BUF];
static size_t watch_len;
static int64_t watch_next;                 /* when the next connect is due */
static char watch_id[CID_LEN + 1];

static void watch_close(void)
{
    if (watch_fd >= 0)
        hang_up(watch_fd, 1);
    watch_fd = -1;
    watch_len = 0;
    watch_id[0] = '\0';
}

static int watch_send(int opcode, const char *payload, size_t len)
{
    uint8_t f[1024];

    if (len > sizeof(f) - 14)
        return -1;
    len = ws_frame(f, 1, opcode, 1, 0x5a17c3e1, payload, len);
    return send_all(watch_fd, f, len, now_ms() + LIVENESS_MS);
}

static int watch_send_connect(void)
{
    char m[256];
    int n = snprintf(m, sizeof(m),
                     "[{\"channel\":\"/meta/connect\",\"clientId\":\"%s\",\"connectionType\":\"websocket\"}]",
                     watch_id);

    watch_next = now_ms() + WATCH_CONNECT_MS;
    return watch_send(1, m, (size_t)n);
}

/* Handles the complete frames in watch_buf. Returns -1 when the watcher
 * must start over. */
static int watch_frames(void)
{
    size_t off = 0;
    int rc = 0;

    while (rc == 0) {
        uint64_t plen;
        int masked;
        size_t h = ws_header(watch_buf + off, watch_len - off, &plen, &masked);
        const uint8_t *pl = watch_buf + off + h;
        uint8_t op;

        if (!h || plen > watch_len - off - h)
            break;
        op = watch_buf[off] & 0x0f;
        if (verbose && op == 1)
            fprintf(stderr, "watcher< %.*s\n", (int)plen, (const char *)pl);
        if (op == 1 && !utf8_valid(pl, (size_t)plen, 0))
            die("invalid UTF-8 in a message to a WebSocket subscriber", NULL);
        if (op == 1 && !watch_id[0]) {
            const uint8_t *id = memmem(pl, (size_t)plen, "\"clientId\":\"", 12);

            if (!id || (size_t)(pl + plen - id) < 12 + CID_LEN + 1)
                rc = -1;
            else
                memcpy(watch_id, id + 12, CID_LEN);
        } else if (op == 1 && (memmem(pl, (size_t)plen, "\"successful\":false", 18))) {
            rc = -1;                       /* forgotten (expired), or refused: start over */
        } else if (op == 9) {
            rc = watch_send(10, (const char *)pl, (size_t)plen);
        } else if (op == 8) {
            rc = -1;
        }
        off += h + (size_t)plen;
    }
    memmove(watch_buf, watch_buf + off, watch_len - off);
    watch_len -= off;
    return rc;
}

/* Reads what the watcher was sent; at most `ms` waiting for more. */
static int watch_read(int ms)
{
    int64_t until = now_ms() + ms;

    for (;;) {
        struct pollfd pf = { .fd = watch_fd, .events = POLLIN };
        ssize_t n;

        if (watch_len == WATCH_BUF)
            return -1;                     /* a frame bigger than we keep: start over */
        n = recv(watch_fd, watch_buf + watch_len, WATCH_BUF - watch_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return -1;
        if (n > 0) {
            watch_len += (size_t)n;
            continue;
        }
        if (watch_frames())
            return -1;
        if (now_ms() >= until || poll(&pf, 1, (int)(until - now_ms())) <= 0)
            return 0;
    }
}

static void watch_open(void)
{
    static const char hello[] =
        "[{\"channel\":\"/meta/handshake\",\"version\":\"1.0\",\"supportedConnectionTypes\":[\"websocket\"]}]";
    char reply[2048], *end, m[256];
    int64_t deadline = now_ms() + LIVENESS_MS;
    ssize_t n;

    if ((watch_fd = dial(LIVENESS_MS)) < 0)
        die("server unresponsive after input", "the watcher cannot connect");
    if (send_all(watch_fd, (const uint8_t *)ws_upgrade, sizeof(ws_upgrade) - 1, deadline) ||
        (n = read_reply(watch_fd, reply, sizeof(reply), "\r\n\r\n", 0, deadline)) < 0 ||
        strncmp(reply, "HTTP/1.1 101 ", 13) || !(end = strstr(reply, "\r\n\r\n")))
        die("server unresponsive after input", "no 101 for the watcher");
    watch_len = (size_t)(reply + n - (end + 4));
    memcpy(watch_buf, end + 4, watch_len);
    if (watch_send(1, hello, sizeof(hello) - 1))
        die("server unresponsive after input", "the watcher cannot send");
    while (!watch_id[0] && now_ms() < deadline)
        if (watch_read(10))
            die("server unresponsive after input", "the watcher got no handshake answer");
    if (!watch_id[0])
        die("server unresponsive after input", "the watcher got no handshake answer");
    snprintf(m, sizeof(m), "[{\"channel\":\"/meta/subscribe\",\"clientId\":\"%s\",\"subscription\":\"/chat/**\"}]",
             watch_id);
    if (watch_send(1, m, strlen(m)) || watch_send_connect())
        die("server unresponsive after input", "the watcher cannot subscribe");
}

/* After each input: take what the watcher was sent, keep it alive. */
static void watch_poll(void)
{
    if (watch_fd < 0)
        watch_open();
    if (watch_read(0) || (now_ms() >= watch_next && watch_send_connect()))
        watch_close();                     /* reopened after the next input */
}

/* ---- liveness ----------------------------------------------------------------------- */

static const char handshake_body[] =
    "[{\"channel\":\"/meta/handshake\",\"version\":\"1.0\","
    "\"supportedConnectionTypes\":[\"long-polling\",\"websocket\"]}]";

/* A fresh connection must be answered a successful handshake within
 * LIVENESS_MS; remembers the clientId for CID_PLACEHOLDER. */
static void check_alive(void)
{
    char req[512], reply[8192], why[160];
    int64_t deadline = now_ms() + LIVENESS_MS;
    int n = snprintf(req, sizeof(req),
                     "POST /faye HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     sizeof(handshake_body) - 1, handshake_body);
    int fd = dial(LIVENESS_MS);
    const char *id;

    if (fd < 0) {
        snprintf(why, sizeof(why), "connect: %s", strerror(errno));
        die("server unresponsive after input", why);
    }
    if (send_all(fd, (const uint8_t *)req, (size_t)n, deadline) ||
        read_reply(fd, reply, sizeof(reply), "\r\n\r\n", 1, deadline) < 0) {
        hang_up(fd, 1);
        die("server unresponsive after input", "no complete answer to a handshake POST");
    }
    hang_up(fd, 1);
    if (strncmp(reply, "HTTP/1.1 200 ", 13) || !strstr(reply, "\"successful\":true") ||
        !(id = strstr(reply, "\"clientId\":\"")) || strlen(id + 12) < CID_LEN + 1 || id[12 + CID_LEN] != '"')
        die("server unresponsive after input", "malformed answer to a handshake POST");
    memcpy(last_id, id + 12, CID_LEN);
}

/* Every connection of ours is closed: the server must see them all go. */
static void check_no_leak(void)
{
    int64_t deadline = now_ms() + LEAK_MS;
    bs_stats_t st;
    char why[96];

    for (;;) {
        bs_server_stats(server, &st);
        if (st.connections <= baseline + (watch_fd >= 0))
            return;
        if (now_ms() > deadline)
            break;
        usleep(1000);
    }
    snprintf(why, sizeof(why), "%llu open, baseline %llu and the watcher", (unsigned long long)st.connections,
             (unsigned long long)baseline);
    die("connections leaked after input", why);
}

/* ---- seeds -------------------------------------------------------------------------- */

static const char *seed_dir;

static void seed(const char *name, int flags, const uint8_t *splits, int k, const void *stream, size_t len)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", seed_dir, name);
    if (!(f = fopen(path, "wb")))
        die("cannot write", path);
    fputc(flags, f);
    fputc(k, f);
    fwrite(splits, 1, (size_t)k, f);
    fwrite(stream, 1, len, f);
    fclose(f);
}

static size_t http_post(char *out, size_t cap, const char *ctype, const char *body)
{
    return (size_t)snprintf(out, cap,
                            "POST /faye HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.com\r\n"
                            "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n%s",
                            ctype, strlen(body), body);
}

static void write_seeds(void)
{
    static const char connect[] =
        "[{\"channel\":\"/meta/connect\",\"clientId\":\"" CID_PLACEHOLDER "\","
        "\"connectionType\":\"long-polling\",\"advice\":{\"timeout\":0}}]";
    static const char subscribe[] =
        "[{\"channel\":\"/meta/subscribe\",\"clientId\":\"" CID_PLACEHOLDER "\",\"subscription\":\"/chat/*\"}]";
    static const char publish[] =
        "[{\"channel\":\"/chat/a\",\"clientId\":\"" CID_PLACEHOLDER "\",\"data\":{\"text\":\"hi\"},\"id\":\"7\"}]";
    static const char ws_connect[] =
        "[{\"channel\":\"/meta/connect\",\"clientId\":\"" CID_PLACEHOLDER "\",\"connectionType\":\"websocket\"}]";
    static const char form[] =
        "message=%5B%7B%22channel%22%3A%22%2Fchat%2Fb%22%2C%22clientId%22%3A%22" CID_PLACEHOLDER
        "%22%2C%22data%22%3A%22x%20y%22%7D%5D&jsonp=cb";
    static const uint8_t none[1], three[] = { 9, 39, 2 }, ones[] = { 0, 0, 0, 0, 0, 0, 0 };
    char s[4096], t[2048];
    uint8_t w[4096];
    size_t n, m;

    n = http_post(s, sizeof(s), "application/json", handshake_body);
    seed("http_handshake", 0, none, 0, s, n);
    seed("http_handshake_split", F_PAUSE, three, 3, s, n);
    seed("http_handshake_bytewise", F_PAUSE | F_RST, ones, 7, s, n);

    n = http_post(s, sizeof(s), "application/json", connect);
    seed("http_connect", 0, none, 0, s, n);
    seed("http_connect_abrupt", F_NOWAIT | F_RST, none, 0, s, n);

    n = http_post(s, sizeof(s), "application/json", subscribe);
    n += http_post(s + n, sizeof(s) - n, "application/json", publish);
    seed("http_pipelined", F_HALFCLOSE, none, 0, s, n);

    n = http_post(s, sizeof(s), "application/json", publish);
    seed("http_publish", 0, none, 0, s, n);

    n = http_post(s, sizeof(s), "application/x-www-form-urlencoded", form);
    seed("http_form_publish", 0, none, 0, s, n);

    n = (size_t)snprintf(s, sizeof(s), "GET /faye.js HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
    seed("http_get_js", 0, none, 0, s, n);

    n = (size_t)snprintf(s, sizeof(s),
                         "OPTIONS /faye HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.com\r\n"
                         "Access-Control-Request-Method: POST\r\n"
                         "Access-Control-Request-Headers: Content-Type\r\n\r\n");
    seed("http_options", 0, none, 0, s, n);

    n = (size_t)snprintf(s, sizeof(s),
                         "GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n", secret);
    seed("http_stats", F_RST, none, 0, s, n);

    /* WebSocket: a session (mask key 0 where the placeholder must stay readable). */
    n = ws_frame(w, 1, 1, 1, 0x1a2b3c4d, handshake_body, sizeof(handshake_body) - 1);
    n += ws_frame(w + n, 1, 1, 1, 0, subscribe, sizeof(subscribe) - 1);
    n += ws_frame(w + n, 1, 1, 1, 0, ws_connect, sizeof(ws_connect) - 1);
    n += ws_frame(w + n, 1, 1, 1, 0, publish, sizeof(publish) - 1);
    seed("ws_session", F_WS, none, 0, w, n);
    seed("ws_session_split", F_WS | F_PAUSE, three, 3, w, n);
    seed("ws_session_inproc", F_WS | F_INPROC, three, 3, w, n);

    /* The upgrade in the stream itself, so its headers are fuzzed too. */
    n = (size_t)snprintf((char *)w, sizeof(w), "%.*s", (int)(sizeof(ws_upgrade) - 5), ws_upgrade);
    n += (size_t)snprintf((char *)w + n, sizeof(w) - n, "\r\nOrigin: http://example.com\r\n\r\n");
    n += ws_frame(w + n, 1, 1, 1, 0x1a2b3c4d, handshake_body, sizeof(handshake_body) - 1);
    seed("http_ws_upgrade_in_stream", 0, none, 0, w, n);

    /* A message in three fragments with a ping between them. */
    m = sizeof(handshake_body) - 1;
    n = ws_frame(w, 0, 1, 1, 0x01020304, handshake_body, 20);
    n += ws_frame(w + n, 1, 9, 1, 0x55aa55aa, "ping", 4);
    n += ws_frame(w + n, 0, 0, 1, 0x0f0f0f0f, handshake_body + 20, 30);
    n += ws_frame(w + n, 1, 0, 1, 0x12345678, handshake_body + 50, m - 50);
    seed("ws_fragmented", F_WS, none, 0, w, n);

    /* A close frame: status 1000 and a reason. */
    memcpy(t, "\x03\xe8" "bye", 5);
    n = ws_frame(w, 1, 1, 1, 0x1a2b3c4d, handshake_body, sizeof(handshake_body) - 1);
    n += ws_frame(w + n, 1, 8, 1, 0x11223344, t, 5);
    seed("ws_close", F_WS, none, 0, w, n);

    /* A message of 200 bytes: the 16-bit length form. */
    n = (size_t)snprintf(t, sizeof(t),
                         "[{\"channel\":\"/chat/big\",\"clientId\":\"" CID_PLACEHOLDER "\",\"data\":\"%0130d\"}]", 0);
    n = ws_frame(w, 1, 1, 1, 0, t, n);
    seed("ws_publish_16bit_length", F_WS, none, 0, w, n);
}

/* ---- libFuzzer ----------------------------------------------------------------------- */

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max);

/* Structure-aware: a quarter of the time the header alone changes (a flag,
 * or the split points), so a stream that got somewhere is retried piped,
 * split, reset or half-closed; else libFuzzer mutates the stream alone and
 * the header stays as it was. Byte-level mutation alone would hit byte 0 of
 * a 300-byte input too rarely. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max, unsigned seed)
{
    uint32_t r = seed * 2654435761u;
    size_t k, nk, i, body;

    if (size < 2 || size < 2 + (size_t)(data[1] & 7) || max < 10) {
        if (max < 2)
            return LLVMFuzzerMutate(data, size, max);
        if (size < 2)
            memset(data + size, 0, 2 - size), size = 2;
        data[1] &= ~7;
        return 2 + LLVMFuzzerMutate(data + 2, size - 2, max - 2);
    }
    k = data[1] & 7;
    body = size - 2 - k;
    switch ((r >> 8) % 8) {
    case 0:
        data[0] ^= (uint8_t)(1u << ((r >> 12) % 7));
        return size;
    case 1:
        nk = (r >> 12) % 8;
        if (2 + nk + body > max)
            nk = k;
        memmove(data + 2 + nk, data + 2 + k, body);
        for (i = 0; i < nk; i++)
            data[2 + i] = (uint8_t)(r >> (i * 4 % 24)) % (body / (nk + 1) + 1);
        data[1] = (uint8_t)((data[1] & ~7) | nk);
        return 2 + nk + body;
    default:
        return 2 + k + LLVMFuzzerMutate(data + 2 + k, body, max - 2 - k);
    }
}

/* At exit the server must stop, in bounded time. */
static void *stop_watchdog(void *arg)
{
    (void)arg;
    sleep(10);
    die("server did not stop within 10 s", NULL);
    return NULL;
}

static void stop_server(void)
{
    pthread_t t;

    if (!server)
        return;
    if (pthread_create(&t, NULL, stop_watchdog, NULL) == 0)
        pthread_detach(t);
    bs_server_free(server);
    server = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const bs_server_config_t cfg = {
        .host = "127.0.0.1", .port = 0, .mount = "/faye", .timeout = 1, .secret = secret,
        .signed_channels = signed_channels, .public_channels = public_channels,
        .max_message_size = MAX_MESSAGE, .max_depth = 32, .max_batch = 100, .max_subscriptions = 20,
        .max_queue = 50, .client_js = client_js, .client_js_len = sizeof(client_js) - 1,
        .history_size = 10, .history_ttl = 5, .history_memory = 1u << 20, .log_fd = -1,
        /* Small enough that a batch of handshakes evicts; at ~100 inputs a
         * second, connected clients (1.6 s each) never fill it. */
        .max_clients = 256, .max_channels = 1000, .request_timeout = 2, .allowed_origins = allowed_origins,
    };
    bs_stats_t st;
    char err[256];
    int i;

    verbose = getenv("TRANSPORT_FUZZ_VERBOSE") && *getenv("TRANSPORT_FUZZ_VERBOSE") == '1';
    for (i = 1; i < *argc; i++) {
        if (strncmp((*argv)[i], "-write_seeds=", 13) == 0) {
            seed_dir = (*argv)[i] + 13;
            mkdir(seed_dir, 0755);
            write_seeds();
            exit(0);
        }
    }
    if (!(server = bs_server_new(&cfg)))
        die("bs_server_new", "out of memory");
    if (bs_server_start(server, err, sizeof(err)))
        die("bs_server_start", err);
    port = bs_server_port(server);
    atexit(stop_server);
    bs_server_stats(server, &st);
    baseline = st.connections;             /* the listener, if lws counts it */
    check_alive();
    check_no_leak();
    watch_open();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t flags, *stream, *hit;
    size_t k, i, off, len, one;
    int64_t deadline;
    int fd, alive = 1;

    if (size < 2 || size < 2 + (size_t)(data[1] & 7))
        return 0;
    flags = data[0];
    k = data[1] & 7;
    one = size - 2 - k;
    len = flags & F_TWICE ? 2 * one : one;
    if (!(stream = malloc(len + 1)))
        return 0;
    memcpy(stream, data + 2 + k, one);
    if (flags & F_TWICE)
        memcpy(stream + one, data + 2 + k, one);
    for (hit = stream; last_id[0] && (hit = memmem(hit, len - (size_t)(hit - stream), CID_PLACEHOLDER, CID_LEN));)
        memcpy(hit, last_id, CID_LEN);

    if ((fd = dial(LIVENESS_MS)) < 0)
        die("server unresponsive after input", "cannot connect");
    answer_len = 0;
    if (flags & F_WS) {
        char reply[2048], *end;
        ssize_t n = read_reply(fd, reply, sizeof(reply), "\r\n\r\n", 0,
                               send_all(fd, (const uint8_t *)ws_upgrade, sizeof(ws_upgrade) - 1,
                                        now_ms() + LIVENESS_MS) ? 0 : now_ms() + LIVENESS_MS);

        if (n < 0 || strncmp(reply, "HTTP/1.1 101 ", 13) || !(end = strstr(reply, "\r\n\r\n")))
            die("server unresponsive after input", "no 101 answer to a WebSocket upgrade");
        /* Frames the server sent right behind its 101. */
        answer_len = (size_t)(reply + n - (end + 4));
        memcpy(answer, end + 4, answer_len);
    }
    deadline = now_ms() + SEND_MS;
    for (i = 0, off = 0; alive && off < len; i++) {
        if ((flags & F_INPROC) && i == (k ? 1 : 0) &&
            bs_server_publish(server, "/chat/inproc", 12, "{\"from\":\"harness\"}", 18, NULL, 0) != BS_OK)
            die("bs_server_publish refused a publish", NULL);
        size_t chunk = i < k ? (size_t)data[2 + i] + 1 : len - off;

        if (chunk > len - off)
            chunk = len - off;
        if (send_all(fd, stream + off, chunk, deadline))
            alive = 0;
        off += chunk;
        if ((flags & F_PAUSE) && off < len && drain(fd, 1, 0, 1))
            alive = 0;
    }
    if (alive && (flags & F_HALFCLOSE))
        shutdown(fd, SHUT_WR);
    if (flags & F_NOWAIT) {
        drain(fd, 0, 0, 0);
    } else {
        const char *why = flags & F_WS ? ws_stream_violation(stream, off) : NULL;

        if (why && !closes_soon(fd))
            die(why, "the server neither sent a close frame nor hung up");
        if (!why)
            drain(fd, ANSWER_FIRST_MS, ANSWER_QUIET_MS, ANSWER_MAX_MS);
        if (flags & F_WS)
            why = ws_answer_wrong(answer, answer_len);
        else
            why = http_answer_wrong(answer, answer_len);
        if (why)
            die(why, NULL);
    }
    hang_up(fd, flags & F_RST);
    free(stream);

    watch_poll();
    check_alive();
    if (++inputs % LEAK_EVERY == 0)
        check_no_leak();
    return 0;
}
