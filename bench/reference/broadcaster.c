/*
 * broadcaster.c: the physical reference of bin/bench (issue 12). A plain C
 * WebSocket broadcaster, no Bayeux: what one core can do when a delivery
 * costs nothing but the kernel's work and one pointer in a queue.
 *
 *   - one thread, one epoll set, edge-triggered non-blocking sockets;
 *   - a client whose upgrade asks for a path containing "publish" is a
 *     publisher, every other client a subscriber;
 *   - each message a publisher sends is encoded once into a server frame
 *     (header + payload, reference counted) and queued, as a pointer, to
 *     every subscriber;
 *   - at the end of each loop turn, every subscriber with something queued
 *     and a socket not known to be full gets one writev() carrying
 *     everything queued for it (up to IOV_MAX frames); what the kernel does
 *     not take waits for EPOLLOUT.
 *
 * No timers, no heartbeats, no TLS, no fragmented messages (a fragment is
 * a protocol error here). A subscriber more than MAX_QUEUE frames behind is
 * dropped.
 *
 * Usage: broadcaster [--port 0]   (binds 127.0.0.1; prints one
 * "reference listening on http://127.0.0.1:PORT/" line, as the other
 * servers of bin/bench do)
 *
 * Build: cc -O2 -Wall -Wextra -o broadcaster bench/reference/broadcaster.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_HEADER 4096          /* an upgrade request larger than this is refused */
#define MAX_MESSAGE (1u << 20)   /* a client message larger than this closes it */
#define MAX_QUEUE 65536          /* frames a subscriber may be behind */
#define WRITE_IOV 1024           /* frames per writev (IOV_MAX on Linux) */

/* ---- SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only ------------------ */

static uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 };
    const uint8_t *p = data;
    uint8_t tail[128] = { 0 };
    size_t full = len & ~(size_t)63, rest = len - full;

    for (size_t i = 0; i < full; i += 64)
        sha1_block(h, p + i);
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    size_t tl = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tl == 128)
        sha1_block(h, tail + 64);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t len, char *out)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < len ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? b64[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- frames and clients ------------------------------------------------- */

/* One server frame (header + payload), shared by every queue that holds it. */
typedef struct frame {
    uint32_t refs;
    uint32_t len;
    uint8_t data[];
} frame_t;

typedef struct client {
    int fd;
    int upgraded;            /* 0: reading the HTTP request */
    int publisher;
    int dirty;               /* on the write list of this turn */
    int blocked;             /* the kernel took less than offered: wait for EPOLLOUT */
    int closing;             /* close after the queue is written */
    uint8_t *in;             /* bytes read, not yet consumed */
    size_t in_len, in_cap;
    frame_t **q;             /* ring of queued frames */
    uint32_t q_head, q_len, q_cap;
    uint32_t q_off;          /* bytes of the first frame already written */
    uint32_t sub_slot;       /* index in subs[] while a subscriber */
} client_t;

static int epfd, listen_fd;
static client_t **subs;      /* the subscribers, unordered */
static uint32_t nsubs, subs_cap;
static client_t **dirty;     /* clients to write at the end of this turn */
static uint32_t ndirty, dirty_cap;
static client_t **dead;      /* clients closed this turn, freed at its end */
static uint32_t ndead, dead_cap;
static volatile sig_atomic_t stopping;

static void die(const char *what)
{
    fprintf(stderr, "broadcaster: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        errno = ENOMEM;
        die("realloc");
    }
    return p;
}

static void frame_unref(frame_t *f)
{
    if (--f->refs == 0)
        free(f);
}

static frame_t *frame_new(int opcode, const uint8_t *payload, size_t len)
{
    uint8_t hdr[10];
    size_t h = 0;

    hdr[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (uint8_t)len;
    } else if (len < 65536) {
        hdr[h++] = 126;
        hdr[h++] = (uint8_t)(len >> 8);
        hdr[h++] = (uint8_t)len;
    } else {
        hdr[h++] = 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    frame_t *f = xrealloc(NULL, sizeof(*f) + h + len);
    f->refs = 1;
    f->len = (uint32_t)(h + len);
    memcpy(f->data, hdr, h);
    memcpy(f->data + h, payload, len);
    return f;
}

static void mark_dirty(client_t *c)
{
    if (c->dirty || c->blocked)
        return;
    if (ndirty == dirty_cap) {
        dirty_cap = dirty_cap ? dirty_cap * 2 : 1024;
        dirty = xrealloc(dirty, dirty_cap * sizeof(*dirty));
    }
    dirty[ndirty++] = c;
    c->dirty = 1;
}

/* Returns 0, or -1 when the subscriber is too far behind. */
static int enqueue(client_t *c, frame_t *f)
{
    if (c->q_len == c->q_cap) {
        if (c->q_cap >= MAX_QUEUE)
            return -1;
        uint32_t cap = c->q_cap ? c->q_cap * 2 : 8;
        frame_t **v = xrealloc(NULL, cap * sizeof(*v));
        for (uint32_t i = 0; i < c->q_len; i++)
            v[i] = c->q[(c->q_head + i) & (c->q_cap - 1)];
        free(c->q);
        c->q = v;
        c->q_head = 0;
        c->q_cap = cap;
    }
    c->q[(c->q_head + c->q_len++) & (c->q_cap - 1)] = f;
    f->refs++;
    mark_dirty(c);
    return 0;
}

static void client_close(client_t *c)
{
    if (c->fd < 0)
        return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->upgraded && !c->publisher) {
        client_t *last = subs[--nsubs];
        subs[c->sub_slot] = last;
        last->sub_slot = c->sub_slot;
    }
    while (c->q_len) {
        frame_unref(c->q[c->q_head]);
        c->q_head = (c->q_head + 1) & (c->q_cap - 1);
        c->q_len--;
    }
    free(c->q);
    free(c->in);
    c->q = NULL;
    c->in = NULL;
    c->q_len = c->q_cap = 0;
    /* Freed at the end of the turn: it may still be on the write list, or
     * later in this turn's epoll events. */
    if (ndead == dead_cap) {
        dead_cap = dead_cap ? dead_cap * 2 : 256;
        dead = xrealloc(dead, dead_cap * sizeof(*dead));
    }
    dead[ndead++] = c;
}

/* One writev of everything queued (up to WRITE_IOV frames). */
static void client_flush(client_t *c)
{
    struct iovec iov[WRITE_IOV];
    int n = 0;
    size_t total = 0;

    for (uint32_t i = 0; i < c->q_len && n < WRITE_IOV; i++, n++) {
        frame_t *f = c->q[(c->q_head + i) & (c->q_cap - 1)];
        size_t skip = i == 0 ? c->q_off : 0;
        iov[n].iov_base = f->data + skip;
        iov[n].iov_len = f->len - skip;
        total += iov[n].iov_len;
    }
    if (n == 0)
        return;
    ssize_t w = writev(c->fd, iov, n);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->blocked = 1;
            return;
        }
        client_close(c);
        return;
    }
    size_t left = (size_t)w;
    while (c->q_len) {
        frame_t *f = c->q[c->q_head];
        size_t rest = f->len - c->q_off;
        if (left < rest) {
            c->q_off += (uint32_t)left;
            break;
        }
        left -= rest;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) & (c->q_cap - 1);
        c->q_len--;
        frame_unref(f);
    }
    if ((size_t)w < total) {
        c->blocked = 1;        /* EPOLLOUT (edge-triggered) will say when */
        return;
    }
    if (c->q_len == 0 && c->closing)
        client_close(c);
}

static void broadcast(const uint8_t *payload, size_t len)
{
    frame_t *f = frame_new(0x1, payload, len);

    for (uint32_t i = 0; i < nsubs;) {
        client_t *s = subs[i];
        if (enqueue(s, f) < 0) {
            client_close(s);     /* moves the last subscriber into slot i */
            continue;
        }
        i++;
    }
    frame_unref(f);
}

/* Control frames go through the same queue, in order. */
static void send_control(client_t *c, int opcode, const uint8_t *payload, size_t len)
{
    frame_t *f = frame_new(opcode, payload, len);
    if (enqueue(c, f) < 0)
        client_close(c);
    frame_unref(f);
}

static int upgrade(client_t *c)
{
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return c->in_len > MAX_HEADER ? -1 : 0;
    size_t hlen = (size_t)(end - c->in) + 4;
    char key[128] = "";
    const char *p = (const char *)c->in, *stop = (const char *)end;

    if (strncmp(p, "GET ", 4) != 0)
        return -1;
    const char *eol = memmem(p, (size_t)(stop - p), "\r\n", 2);
    c->publisher = eol && memmem(p, (size_t)(eol - p), "publish", 7) != NULL;
    while (eol && eol < stop) {
        p = eol + 2;
        eol = memmem(p, (size_t)(stop + 2 - p), "\r\n", 2);
        if (eol && strncasecmp(p, "Sec-WebSocket-Key:", 18) == 0) {
            const char *v = p + 18;
            while (*v == ' ')
                v++;
            size_t n = (size_t)(eol - v);
            if (n >= 64)
                return -1;
            memcpy(key, v, n);
            key[n] = 0;
        }
    }
    if (!key[0])
        return -1;
    strcat(key, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    uint8_t digest[20];
    char accept[32], resp[256];
    sha1(key, strlen(key), digest);
    base64(digest, 20, accept);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    frame_t *f = xrealloc(NULL, sizeof(*f) + (size_t)n);
    f->refs = 1;
    f->len = (uint32_t)n;
    memcpy(f->data, resp, (size_t)n);
    /* Subscribed before the 101 is even written: a message published after
     * the client saw the 101 reaches it. */
    enqueue(c, f);
    frame_unref(f);
    c->upgraded = 1;
    memmove(c->in, c->in + hlen, c->in_len - hlen);
    c->in_len -= hlen;
    if (!c->publisher) {
        if (nsubs == subs_cap) {
            subs_cap = subs_cap ? subs_cap * 2 : 1024;
            subs = xrealloc(subs, subs_cap * sizeof(*subs));
        }
        c->sub_slot = nsubs;
        subs[nsubs++] = c;
    }
    return 1;
}

/* Consumes complete client frames. Returns -1 to close. */
static int read_frames(client_t *c)
{
    size_t off = 0;

    if (c->in_len == 0)
        return 0;
    while (c->in_len - off >= 2) {
        uint8_t *p = c->in + off;
        size_t avail = c->in_len - off, h = 2;
        int fin = p[0] & 0x80, op = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;

        if (!(p[1] & 0x80) || (p[0] & 0x70) || !fin)
            return -1;           /* unmasked, extension bits, or fragmented */
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            h = 10;
        }
        if (len > MAX_MESSAGE)
            return -1;
        if (avail < h + 4 + len)
            break;
        uint8_t *mask = p + h, *payload = p + h + 4;
        for (uint64_t i = 0; i < len; i++)
            payload[i] ^= mask[i & 3];
        if (op == 0x1 || op == 0x2) {
            if (c->publisher)
                broadcast(payload, len);
        } else if (op == 0x8) {
            send_control(c, 0x8, payload, len < 2 ? len : 2);
            c->closing = 1;
            return 0;
        } else if (op == 0x9) {
            send_control(c, 0xA, payload, len);
        } else if (op != 0xA) {
            return -1;
        }
        off += h + 4 + len;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

static void on_readable(client_t *c)
{
    while (c->fd >= 0 && !c->closing) {
        if (c->in_cap - c->in_len < 16384) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 16384;
            c->in = xrealloc(c->in, c->in_cap);
        }
        ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->in_len == 0) {   /* idle clients keep no read buffer */
                free(c->in);
                c->in = NULL;
                c->in_cap = 0;
            }
            return;
        }
        if (n <= 0) {
            client_close(c);
            return;
        }
        c->in_len += (size_t)n;
        if (!c->upgraded) {
            int r = upgrade(c);
            if (r < 0) {
                client_close(c);
                return;
            }
            if (r == 0)
                continue;
        }
        if (read_frames(c) < 0) {
            client_close(c);
            return;
        }
        if (c->in_len > MAX_MESSAGE + 16) {
            client_close(c);
            return;
        }
    }
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;            /* EAGAIN, or out of fds: the backlog waits */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        client_t *c = xrealloc(NULL, sizeof(*c));
        memset(c, 0, sizeof(*c));
        c->fd = fd;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    int port = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: broadcaster [--port P]\n");
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(listen_fd, 4096) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &alen);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &lev) < 0)
        die("epoll_ctl");
    printf("reference listening on http://127.0.0.1:%d/\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event evs[512];
    while (!stopping) {
        int n = epoll_wait(epfd, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            client_t *c = evs[i].data.ptr;
            if (!c) {
                on_accept();
                continue;
            }
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT) {
                c->blocked = 0;
                if (c->q_len)
                    mark_dirty(c);
            }
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
        /* The turn's writes: one writev per client with something queued.
         * Entries appended meanwhile (a close) are visited too. */
        for (uint32_t i = 0; i < ndirty; i++) {
            client_t *c = dirty[i];
            c->dirty = 0;
            if (c->fd >= 0)
                client_flush(c);
        }
        ndirty = 0;
        for (uint32_t i = 0; i < ndead; i++)
            free(dead[i]);
        ndead = 0;
    }
    return 0;
}
