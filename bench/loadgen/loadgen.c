/*
 * loadgen.c: the load generator behind bin/bench. One thread, one epoll set,
 * non-blocking loopback sockets, so that it stays cheaper per delivery than
 * the server it measures (bin/bench pins it to a different core).
 *
 * It speaks Bayeux as a Faye client does: HTTP POST /meta/handshake, then a
 * WebSocket at the same path (no subprotocol, masked frames), /meta/connect
 * and /meta/subscribe over the socket, and a new /meta/connect whenever the
 * held one is answered. One extra client publishes with ext.secret.
 *
 * Phases: connect N subscribers -> idle (server RSS per connection) -> warm-up
 * message -> throughput (at most `window` messages not yet delivered to every
 * subscriber) -> latency (fixed total delivery rate) -> optional hold -> loss
 * accounting. Results go to stdout as "key value" lines for bin/bench.
 *
 * With --port2 the subscribers alternate between two nodes that share a
 * Redis backplane (the publisher stays on the first); every delivery's
 * ext.offset is checked against its sequence number, so both nodes must
 * number the stream alike.
 *
 * With --raw it drives bench/reference/broadcaster.c instead: no Bayeux
 * session, each client only a WebSocket upgrade (the publisher's path says
 * "publish"), a subscriber ready once upgraded, and the publisher sending
 * the message exactly as a Bayeux server delivers it ([{"channel":..,
 * "data":{"seq":..,"t":..,"pad":..},"id":..}], --size bytes inside the
 * brackets), so that window, payload and delivery counting stay the same.
 *
 * With --churn SECONDS (bin/soak) it runs the soak instead of the phases:
 * after the subscribers are set up, a publisher sends at a steady rate while
 * slices of subscribers are dropped (abruptly, with a WebSocket close, or
 * with /meta/disconnect) and come back with a new handshake and a subscribe
 * carrying ext.since of their last delivery; the next slice goes only once
 * the last is back. Every subscriber must end with
 * every offset after its first subscribe, once and in order; then all
 * disconnect and the server's fds and RSS must return near the baseline.
 *
 * Build: cc -O2 -Wall -Wextra -o loadgen bench/loadgen/[a-z]*.c
 *
 * Files: loadgen.c (this: options, connections, WebSocket and HTTP, the
 * event loop, phases and results), bjson.c (reading Bayeux messages),
 * proc.c (/proc probes), util.c (clock, errors, buffers).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "bjson.h"
#include "proc.h"
#include "util.h"

#define CHANNEL "/bench/fanout"
#define MAX_WS_MESSAGE (16u << 20)   /* a frame bigger than this is a server bug */

/* ---- options -------------------------------------------------------------- */

static struct {
    int port;
    int port2;                /* a second node (Redis backplane): odd subscribers go there */
    int subs;
    int messages;
    int window;
    double latency_seconds;
    double latency_rate;      /* total deliveries per second in the latency phase */
    double hold_seconds;
    int server_pid;
    int server_pid2;
    const char *secret;
    const char *mount;
    int msg_size;
    int setup_concurrency;
    double phase_timeout;     /* hard deadline of each phase, seconds */
    double stall_timeout;     /* a phase ends when nothing arrives for this long */
    double churn_seconds;     /* > 0: the soak (bin/soak) instead of the phases */
    double churn_rate;        /* messages per second published during the soak */
    double churn_interval;    /* seconds between two drops */
    double churn_slice;       /* fraction of the subscribers dropped each time */
    double settle_seconds;    /* how long to wait for fds and RSS to come back */
    int fd_slack;             /* tolerated server fds above the baseline */
    long rss_slack_kib;       /* tolerated server RSS above the baseline */
    int raw;                  /* raw WebSocket, no Bayeux: the reference broadcaster */
    int server_cpu;           /* the CPU the server is pinned to (-1: not pinned) */
} opt = {
    .server_cpu = -1,
    .port = 0, .subs = 100, .messages = 1000, .window = 64,
    .latency_seconds = 5, .latency_rate = 5000, .hold_seconds = 0,
    .server_pid = 0, .secret = NULL, .mount = "/faye", .msg_size = 200,
    .setup_concurrency = 128, .phase_timeout = 120, .stall_timeout = 5,
    .churn_seconds = 0, .churn_rate = 5, .churn_interval = 1, .churn_slice = 0.02,
    .settle_seconds = 15, .fd_slack = 10, .rss_slack_kib = 10240,
};

/* Over both nodes when there are two; -1 when a figure is missing. */
static long server_rss_kib(void)
{
    if (!opt.server_pid)
        return -1;
    long a = proc_rss_kib(opt.server_pid), b = opt.server_pid2 ? proc_rss_kib(opt.server_pid2) : 0;
    return a < 0 || b < 0 ? -1 : a + b;
}

static int64_t server_cpu_us(void)
{
    if (!opt.server_pid)
        return -1;
    int64_t a = proc_cpu_us(opt.server_pid), b = opt.server_pid2 ? proc_cpu_us(opt.server_pid2) : 0;
    return a < 0 || b < 0 ? -1 : a + b;
}

/* ---- connections ---------------------------------------------------------- */

enum cstate {
    C_IDLE, C_HS_CONNECTING, C_HS_READING, C_WS_CONNECTING, C_WS_UPGRADING,
    C_OPEN, C_DEAD,
    C_CLOSING,                /* soak: sent a close (and maybe /meta/disconnect), awaiting the server's */
    C_WAIT                    /* soak: dropped, queued to reconnect */
};

typedef struct conn {
    int fd;
    int index;                /* subscriber index, or -1 for the publisher */
    int node;                 /* 0, or 1 for the second node (--port2) */
    enum cstate state;
    int ready;                /* subscriber: subscribed; publisher: socket open */
    int want_out;             /* EPOLLOUT currently requested */
    int closing;              /* we sent a close frame */
    char client_id[200];      /* JSON-escaped */
    uint32_t next_id;         /* Bayeux message id counter */
    buf_t rbuf, wbuf, frag;
    int frag_open;
    uint32_t received;        /* distinct benchmark deliveries */
    int64_t rx_ns;            /* kernel receive time of the last read (now_ns clock), 0 if unknown */
    uint8_t *seen;            /* bitmap over sequence numbers (soak: over offsets) */
    /* the soak (--churn) */
    int resub;                /* setting up again after a drop: subscribes with ext.since */
    int attempts;             /* failed reconnects in a row */
    int has_base;
    uint64_t base_off;        /* the channel's offset in the first subscribe reply */
    uint64_t last_off;        /* highest offset delivered, else base_off */
    char epoch[48];           /* the epoch that came with last_off */
    int64_t close_due;        /* C_CLOSING: when to stop waiting for the server */
} conn_t;

static int epfd;
static struct sockaddr_in server_addr[2];   /* by node */
static conn_t *subs;
static conn_t pub;
static int shutting_down;

static struct {
    int setups_active;
    int next_setup;
    int ready;
    int setup_failures;
    int unexpected_closes;    /* after being ready */
    uint64_t bayeux_errors;
    char first_error[512];
    uint64_t malformed;
    uint64_t connect_replies;
    uint64_t pub_acks, pub_nacks;
    uint64_t deliveries, dups, bogus;
    uint64_t no_rx_stamp;
    uint64_t sub_rx_bytes;    /* WebSocket message bytes received by subscribers */
    uint64_t sub_rx_frames;   /* WebSocket messages (frames, or fragmented messages) they got */
    uint64_t sub_reads;       /* recvmsg() calls that returned data on subscriber sockets */
    int64_t last_delivery_ns;
    uint64_t offsets_checked, offset_mismatch, epoch_mismatch, no_offset;
    /* the soak (--churn) */
    int resubs_active, closing, dead_subs;
    uint64_t churn_cycles, churn_late, drops[4], reconnects, reconnect_retries, close_timeouts;
    int64_t slice_out_ns, slice_max_ns, slice_sum_ns;   /* drop -> whole slice subscribed again */
    uint64_t recovered, not_recovered, out_of_order;
} st;

/* ext.offset - data.seq of the first delivery, and its epoch: every later
 * delivery, on either node, must agree. */
static int64_t offset_delta;
static int offset_delta_set;
static char stream_epoch[48];

/* The soak: subscribers waiting to reconnect (a ring of indices; each is in
 * it at most once, while in C_WAIT), and the offset of the first subscribe
 * reply, below which no subscriber expects anything. */
static int *rq;
static int rq_head, rq_len;
static uint64_t global_base;
static int global_base_set;
static const char *const drop_names[4] = { "fin", "rst", "ws_close", "meta_disconnect" };

/* per sequence number */
static int total_seqs;        /* capacity */
static int published;         /* next sequence number */
static uint32_t *remaining;   /* subscribers that still have to receive it */
static int inflight;          /* published, not yet delivered to every ready subscriber */
static int phase_first;       /* first sequence number of the current phase */
static int phase_done;        /* messages of this phase delivered to every ready subscriber */
static int lat_first_seq = -1;

/* Latency samples in microseconds, two clocks: lat_app ends when the loadgen
 * parses the delivery; lat_arr ends when the kernel queued the bytes on the
 * subscriber's socket (SO_TIMESTAMPNS), so it leaves out the time the load
 * generator itself took to get round to reading 5,000 sockets. */
static uint32_t *lat_app, *lat_arr;
static size_t lat_n, lat_cap;
static int64_t *first_rx, *last_rx;   /* per sequence number, arrival clock */
static int64_t realtime_offset;   /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns */

/* epoll tag: slot (0 = publisher, i+1 = subscriber i) and fd */
static uint64_t ev_tag(const conn_t *c, int fd)
{
    return ((uint64_t)(uint32_t)fd << 32) | (uint32_t)(c->index + 1);
}

static void record_error(const char *what, const char *detail)
{
    st.bayeux_errors++;
    if (!st.first_error[0])
        snprintf(st.first_error, sizeof st.first_error, "%s: %s", what, detail);
}

static void conn_events(conn_t *c, int out)
{
    if (c->fd < 0 || c->want_out == out)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = ev_tag(c, c->fd) };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = out;
}

static void conn_close_fd(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->want_out = 0;
    c->rbuf.off = c->rbuf.len = 0;
    c->wbuf.off = c->wbuf.len = 0;
    c->frag.off = c->frag.len = 0;
    c->frag_open = 0;
}

static void start_next_setups(void);

static int node_port(const conn_t *c)
{
    return c->node ? opt.port2 : opt.port;
}

/* Soak: back in line to reconnect, subscribing with ext.since this time. */
static void churn_requeue(conn_t *c)
{
    c->ready = 0;
    c->resub = 1;
    c->state = C_WAIT;
    rq[(rq_head + rq_len++) % opt.subs] = c->index;
}

static void resub_done(conn_t *c, int ok, const char *why)
{
    st.resubs_active--;
    if (ok) {
        st.reconnects++;
        c->attempts = 0;
        return;
    }
    conn_close_fd(c);
    record_error("reconnect", why ? why : "failed");
    if (++c->attempts < 3) {
        st.reconnect_retries++;
        churn_requeue(c);
    } else {
        c->state = C_DEAD;
        st.dead_subs++;
    }
}

static void setup_done(conn_t *c, int ok, const char *why)
{
    if (c->index < 0)
        return;
    if (c->resub) {
        resub_done(c, ok, why);
        return;
    }
    st.setups_active--;
    if (ok) {
        st.ready++;
    } else {
        st.setup_failures++;
        if (why)
            record_error("setup", why);
        conn_close_fd(c);
        c->state = C_DEAD;
    }
    start_next_setups();
}

/* The connection died under us (or the server refused something during setup). */
static void conn_lost(conn_t *c, const char *why)
{
    enum cstate was = c->state;
    conn_close_fd(c);
    if (was == C_WAIT)      /* lost twice (a failed write, then the read): already queued */
        return;
    c->state = C_DEAD;
    if (was == C_CLOSING)
        st.closing--;
    if (was == C_DEAD || shutting_down)
        return;
    if (was == C_CLOSING) {                   /* the server answered the close we sent */
        churn_requeue(c);
        return;
    }
    if (c->index >= 0 && !c->ready) {        /* a subscriber still setting up */
        setup_done(c, 0, why);
        return;
    }
    if (c->index < 0 && was != C_OPEN) {      /* the publisher never got going */
        record_error("publisher setup", why);
        return;
    }
    st.unexpected_closes++;
    if (st.unexpected_closes <= 3)
        warnx_("%s %d closed: %s", c->index < 0 ? "publisher" : "subscriber", c->index, why);
    /* Counted as a failure; still, come back as a client would, so that the
     * delivery accounting stays about the server's recovery. */
    if (opt.churn_seconds > 0 && c->index >= 0)
        churn_requeue(c);
}

static void conn_flush(conn_t *c)
{
    while (c->wbuf.len > 0) {
        ssize_t n = write(c->fd, c->wbuf.p + c->wbuf.off, c->wbuf.len);
        if (n > 0) {
            buf_consume(&c->wbuf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_events(c, 1);
            return;
        }
        conn_lost(c, n < 0 ? strerror(errno) : "write returned 0");
        return;
    }
    conn_events(c, 0);
}

static int conn_open_socket(conn_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server_addr[c->node], sizeof server_addr[0]) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u64 = ev_tag(c, fd) };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    c->fd = fd;
    c->want_out = 1;
    return 0;
}

static void conn_begin(conn_t *c)
{
    c->fd = -1;
    c->next_id = 1;
    if (conn_open_socket(c) < 0) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        c->state = C_DEAD;
        if (c->index >= 0)
            setup_done(c, 0, why);
        else
            record_error("publisher setup", why);
        return;
    }
    c->state = opt.raw ? C_WS_CONNECTING : C_HS_CONNECTING;
}

static void start_next_setups(void)
{
    while (!shutting_down && st.setups_active < opt.setup_concurrency && st.next_setup < opt.subs) {
        conn_t *c = &subs[st.next_setup++];
        st.setups_active++;
        conn_begin(c);
    }
}

/* ---- WebSocket framing (client side: masked) ----------------------------- */

static void ws_send(conn_t *c, int opcode, const char *payload, size_t len)
{
    uint8_t hdr[14];
    size_t h = 0;
    hdr[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(len >> 8);
        hdr[h++] = (uint8_t)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = rnd32();
    uint8_t mask[4] = { (uint8_t)key, (uint8_t)(key >> 8), (uint8_t)(key >> 16), (uint8_t)(key >> 24) };
    memcpy(hdr + h, mask, 4);
    h += 4;
    buf_append(&c->wbuf, hdr, h);
    buf_reserve(&c->wbuf, len);
    char *dst = c->wbuf.p + c->wbuf.off + c->wbuf.len;
    for (size_t i = 0; i < len; i++)
        dst[i] = (char)(payload[i] ^ mask[i & 3]);
    c->wbuf.len += len;
}

static void send_connect(conn_t *c)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "[{\"channel\":\"/meta/connect\",\"clientId\":\"%s\",\"connectionType\":\"websocket\",\"id\":\"%x\"}]",
                     c->client_id, c->next_id++);
    ws_send(c, 1, msg, (size_t)n);
}

/* ---- Bayeux message handling ---------------------------------------------- */

static void check_offset(const bmsg_t *m)
{
    if (!m->has_offset) {
        st.no_offset++;         /* Node Faye, or history turned off */
        return;
    }
    st.offsets_checked++;
    int64_t d = (int64_t)m->offset - m->seq;
    if (!offset_delta_set) {
        offset_delta = d;
        offset_delta_set = 1;
        snprintf(stream_epoch, sizeof stream_epoch, "%s", m->epoch);
    } else if (d != offset_delta) {
        if (!st.offset_mismatch++) {
            char why[160];
            snprintf(why, sizeof why, "seq %" PRId64 " came with offset %" PRIu64 ", expected %" PRId64,
                     m->seq, m->offset, m->seq + offset_delta);
            record_error("ext.offset", why);
        }
    }
    if (strcmp(m->epoch, stream_epoch) != 0 && !st.epoch_mismatch++)
        record_error("ext.epoch", m->epoch);
}

/* Soak: judged by offset, the server's own numbering. A subscriber expects
 * every offset after base_off (its first subscribe) exactly once, ascending. */
static void on_churn_delivery(conn_t *c, const bmsg_t *m)
{
    if (c->index < 0 || !m->has_seq || !m->has_offset) {
        st.bogus++;
        return;
    }
    check_offset(m);
    if ((int64_t)m->offset - m->seq != (int64_t)global_base + 1 && !st.offset_mismatch++)
        record_error("ext.offset", "the first message published did not get the offset after the subscribe reply's");
    if (!c->has_base || m->offset <= c->base_off || m->offset > global_base + (uint64_t)published) {
        st.bogus++;
        return;
    }
    uint64_t k = m->offset - global_base - 1;
    uint8_t bit = (uint8_t)(1u << (k & 7));
    if (c->seen[k >> 3] & bit) {
        st.dups++;
        return;
    }
    c->seen[k >> 3] |= bit;
    c->received++;
    st.deliveries++;
    st.last_delivery_ns = now_ns();
    if (m->offset < c->last_off) {
        st.out_of_order++;
    } else {
        c->last_off = m->offset;
        if (json_escape(c->epoch, sizeof c->epoch, m->epoch) < 0)
            c->epoch[0] = 0;
    }
}

/* Soak: a subscribe reply; the first sets the subscriber's base. */
static void churn_subscribed(conn_t *c, const bmsg_t *m)
{
    if (!m->has_offset || !m->epoch[0]) {
        record_error("/meta/subscribe", "reply without ext.offset and ext.epoch: is history on?");
        return;
    }
    if (!c->has_base) {
        c->has_base = 1;
        c->base_off = c->last_off = m->offset;
        if (json_escape(c->epoch, sizeof c->epoch, m->epoch) < 0)
            c->epoch[0] = 0;
        if (!global_base_set) {
            global_base = m->offset;
            global_base_set = 1;
        } else if (m->offset < global_base) {
            record_error("/meta/subscribe", "an offset below the first subscriber's");
            c->base_off = c->last_off = global_base;
        }
        return;
    }
    if (m->recovered == 1) {
        st.recovered++;
    } else {
        st.not_recovered++;
        char why[160];
        snprintf(why, sizeof why, "recovered %s from offset %" PRIu64 " (reply offset %" PRIu64 ")",
                 m->recovered == 0 ? "false" : "missing", c->last_off, m->offset);
        record_error("/meta/subscribe", why);
    }
}

static void on_delivery(conn_t *c, const bmsg_t *m)
{
    int64_t now = now_ns();
    if (!m->has_seq || m->seq < 0 || m->seq >= published || c->index < 0) {
        st.bogus++;
        return;
    }
    check_offset(m);
    int seq = (int)m->seq;
    uint8_t bit = (uint8_t)(1u << (seq & 7));
    if (c->seen[seq >> 3] & bit) {
        st.dups++;
        return;
    }
    c->seen[seq >> 3] |= bit;
    c->received++;
    st.deliveries++;
    st.last_delivery_ns = now;
    if (remaining[seq] > 0 && --remaining[seq] == 0) {
        inflight--;
        if (seq >= phase_first)
            phase_done++;
    }
    if (lat_first_seq >= 0 && seq >= lat_first_seq && m->has_t) {
        if (lat_n == lat_cap) {
            lat_cap = lat_cap ? lat_cap * 2 : 65536;
            lat_app = realloc(lat_app, lat_cap * sizeof *lat_app);
            lat_arr = realloc(lat_arr, lat_cap * sizeof *lat_arr);
            if (!lat_app || !lat_arr)
                die("out of memory");
        }
        int64_t d = (now - m->t) / 1000;
        int64_t a = ((c->rx_ns > 0 && c->rx_ns <= now ? c->rx_ns : now) - m->t) / 1000;
        lat_app[lat_n] = d < 0 ? 0 : (uint32_t)d;
        lat_arr[lat_n] = a < 0 ? 0 : (uint32_t)a;
        lat_n++;
        int64_t at = a * 1000 + m->t;
        if (!first_rx[seq] || at < first_rx[seq])
            first_rx[seq] = at;
        if (at > last_rx[seq])
            last_rx[seq] = at;
        if (c->rx_ns <= 0)
            st.no_rx_stamp++;
    }
}

static void on_message(void *ctx, const bmsg_t *m)
{
    conn_t *c = ctx;
    if (strcmp(m->channel, "/meta/connect") == 0) {
        st.connect_replies++;
        if (m->successful == 1) {
            if (!shutting_down && c->state == C_OPEN)
                send_connect(c);
        } else {
            record_error("/meta/connect", m->error[0] ? m->error : "unsuccessful");
        }
        return;
    }
    if (strcmp(m->channel, "/meta/subscribe") == 0) {
        if (m->successful == 1 && c->index >= 0 && !c->ready) {
            if (opt.churn_seconds > 0)
                churn_subscribed(c, m);
            c->ready = 1;
            setup_done(c, 1, NULL);
        } else if (m->successful != 1) {
            char why[300];
            snprintf(why, sizeof why, "/meta/subscribe: %s", m->error);
            if (c->index >= 0 && !c->ready)
                setup_done(c, 0, why);
            else
                record_error("/meta/subscribe", m->error);
        }
        return;
    }
    if (strcmp(m->channel, CHANNEL) == 0) {
        if (m->successful >= 0) {        /* a reply to a publish */
            if (m->successful == 1) {
                st.pub_acks++;
            } else {
                st.pub_nacks++;
                record_error("publish", m->error);
            }
            return;
        }
        if (m->has_data) {
            if (opt.churn_seconds > 0)
                on_churn_delivery(c, m);
            else
                on_delivery(c, m);
            return;
        }
    }
    if (m->successful == 0)
        record_error(m->channel, m->error);
}

static void on_ws_message(conn_t *c, const char *p, size_t len)
{
    if (c->index >= 0) {
        st.sub_rx_bytes += len;
        st.sub_rx_frames++;
    }
    if (parse_bayeux(p, len, on_message, c) < 0) {
        st.malformed++;
        if (st.malformed <= 3)
            warnx_("malformed frame (%zu bytes): %.*s", len, (int)(len > 300 ? 300 : len), p);
    }
}

/* Consumes complete frames from rbuf. */
static void ws_read_frames(conn_t *c)
{
    while (c->fd >= 0) {
        uint8_t *p = (uint8_t *)c->rbuf.p + c->rbuf.off;
        size_t avail = c->rbuf.len;
        if (avail < 2)
            return;
        int fin = p[0] & 0x80, op = p[0] & 0x0f, masked = p[1] & 0x80;
        if (p[0] & 0x70) {
            conn_lost(c, "frame with RSV bits set (no extension was negotiated)");
            return;
        }
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (avail < 4)
                return;
            len = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                return;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | p[2 + i];
            h = 10;
        }
        if (len > MAX_WS_MESSAGE) {
            conn_lost(c, "frame too large");
            return;
        }
        size_t mh = masked ? 4 : 0;
        if (avail < h + mh + len)
            return;
        char *payload = (char *)p + h + mh;
        if (masked)
            for (uint64_t i = 0; i < len; i++)
                payload[i] ^= p[h + (i & 3)];
        if (op >= 8) {
            if (!fin || len > 125) {
                conn_lost(c, "bad control frame");
                return;
            }
            if (op == 9) {
                ws_send(c, 0xA, payload, len);
            } else if (op == 8) {
                if (!c->closing) {
                    ws_send(c, 8, payload, len < 2 ? len : 2);
                    c->closing = 1;
                }
                conn_flush(c);
                conn_lost(c, "server sent a close frame");
                return;
            }
        } else if (op == 0) {
            if (!c->frag_open) {
                conn_lost(c, "continuation frame without a start");
                return;
            }
            if (c->frag.len + len > MAX_WS_MESSAGE) {
                conn_lost(c, "fragmented message too large");
                return;
            }
            buf_append(&c->frag, payload, len);
            if (fin) {
                c->frag_open = 0;
                on_ws_message(c, c->frag.p + c->frag.off, c->frag.len);
                c->frag.off = c->frag.len = 0;
            }
        } else if (op == 1 || op == 2) {
            if (c->frag_open) {
                conn_lost(c, "new data frame inside a fragmented message");
                return;
            }
            if (fin) {
                on_ws_message(c, payload, len);
            } else {
                c->frag_open = 1;
                buf_append(&c->frag, payload, len);
            }
        } else {
            conn_lost(c, "unknown opcode");
            return;
        }
        if (c->fd < 0)
            return;
        buf_consume(&c->rbuf, h + mh + len);
    }
}

/* ---- HTTP: the handshake POST and the upgrade ----------------------------- */

static const char *find_crlf2(const char *p, size_t len)
{
    return memmem(p, len, "\r\n\r\n", 4);
}

/* Finds a header value (case-insensitive name) inside the header block. */
static int header_value(const char *hdrs, size_t hlen, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *p = hdrs, *end = hdrs + hlen;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t n = (size_t)(eol - v);
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return 1;
        }
        p = eol + 2;
    }
    return 0;
}

/* Decodes a chunked body in place. Returns its length, -1 if incomplete, -2 if malformed. */
static long dechunk(char *p, size_t len)
{
    size_t in = 0, out = 0;
    for (;;) {
        const char *eol = memmem(p + in, len - in, "\r\n", 2);
        if (!eol)
            return -1;
        char *end;
        unsigned long n = strtoul(p + in, &end, 16);
        if (end == p + in)
            return -2;
        in = (size_t)(eol - p) + 2;
        if (n == 0)
            return (long)out;
        if (len - in < n + 2)
            return -1;
        memmove(p + out, p + in, n);
        out += n;
        in += n + 2;
    }
}

static void on_handshake_reply(void *ctx, const bmsg_t *m)
{
    conn_t *c = ctx;
    if (strcmp(m->channel, "/meta/handshake") == 0) {
        /* kept JSON-escaped: it is only ever pasted into outgoing messages */
        if (m->successful == 1 && m->client_id[0] &&
            json_escape(c->client_id, sizeof c->client_id, m->client_id) == 0)
            ;
        else
            record_error("/meta/handshake", m->error[0] ? m->error : "no clientId");
    }
}

/* Returns 1 once the handshake response is complete and handled. */
static int http_handshake_read(conn_t *c, int eof)
{
    char *p = c->rbuf.p + c->rbuf.off;
    size_t len = c->rbuf.len;
    const char *hend = find_crlf2(p, len);
    if (!hend)
        return eof ? -1 : 0;
    size_t hlen = (size_t)(hend - p) + 4;
    char val[64];
    long body_len = -1;
    if (header_value(p, hlen, "Transfer-Encoding", val, sizeof val) && strcasestr(val, "chunked")) {
        body_len = dechunk(p + hlen, len - hlen);
        if (body_len == -2)
            return -1;
        if (body_len == -1)
            return eof ? -1 : 0;
    } else if (header_value(p, hlen, "Content-Length", val, sizeof val)) {
        body_len = atol(val);
        if ((long)(len - hlen) < body_len)
            return eof ? -1 : 0;
    } else {
        if (!eof)
            return 0;
        body_len = (long)(len - hlen);
    }
    if (strncmp(p, "HTTP/1.1 200", 12) != 0 && strncmp(p, "HTTP/1.0 200", 12) != 0) {
        record_error("handshake status", p);
        return -1;
    }
    c->client_id[0] = 0;
    if (parse_bayeux(p + hlen, (size_t)body_len, on_handshake_reply, c) < 0) {
        st.malformed++;
        return -1;
    }
    return c->client_id[0] ? 1 : -1;
}

static void send_handshake(conn_t *c)
{
    static const char body[] =
        "[{\"channel\":\"/meta/handshake\",\"version\":\"1.0\",\"supportedConnectionTypes\":"
        "[\"websocket\",\"eventsource\",\"long-polling\",\"cross-origin-long-polling\",\"callback-polling\"],\"id\":\"1\"}]";
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     opt.mount, node_port(c), sizeof body - 1, body);
    buf_append(&c->wbuf, req, (size_t)n);
    c->next_id = 2;
}

static void send_upgrade(conn_t *c)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t raw[18] = { 0 };
    char key[25];
    for (int i = 0; i < 16; i++)
        raw[i] = (uint8_t)rnd32();
    for (int i = 0, o = 0; i < 18; i += 3) {
        uint32_t v = ((uint32_t)raw[i] << 16) | ((uint32_t)raw[i + 1] << 8) | raw[i + 2];
        key[o++] = b64[(v >> 18) & 63];
        key[o++] = b64[(v >> 12) & 63];
        key[o++] = b64[(v >> 6) & 63];
        key[o++] = b64[v & 63];
    }
    key[22] = key[23] = '=';
    key[24] = 0;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     opt.raw && c->index < 0 ? "/publish" : opt.mount, node_port(c), key);
    buf_append(&c->wbuf, req, (size_t)n);
}

static void on_ws_open(conn_t *c)
{
    c->state = C_OPEN;
    if (opt.raw) {             /* the reference: upgraded is subscribed */
        c->ready = 1;
        if (c->index >= 0)
            setup_done(c, 1, NULL);
        return;
    }
    send_connect(c);
    if (c->index >= 0) {
        char msg[512], ext[160] = "";
        if (c->resub && c->has_base)      /* recover from the last delivery this subscriber had */
            snprintf(ext, sizeof ext, ",\"ext\":{\"since\":{\"offset\":%" PRIu64 ",\"epoch\":\"%s\"}}",
                     c->last_off, c->epoch);
        int n = snprintf(msg, sizeof msg,
                         "[{\"channel\":\"/meta/subscribe\",\"clientId\":\"%s\",\"subscription\":\"%s\",\"id\":\"%x\"%s}]",
                         c->client_id, CHANNEL, c->next_id++, ext);
        ws_send(c, 1, msg, (size_t)n);
    } else {
        c->ready = 1;
    }
}

/* ---- the event loop ------------------------------------------------------- */

static void on_writable(conn_t *c)
{
    if (c->state == C_HS_CONNECTING || c->state == C_WS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            char why[128];
            snprintf(why, sizeof why, "connect: %s", strerror(err));
            conn_lost(c, why);
            return;
        }
        if (c->state == C_HS_CONNECTING) {
            send_handshake(c);
            c->state = C_HS_READING;
        } else {
            send_upgrade(c);
            c->state = C_WS_UPGRADING;
        }
    }
    conn_flush(c);
}

static void on_readable(conn_t *c)
{
    int eof = 0;
    buf_reserve(&c->rbuf, 16384);
    struct iovec iov = { c->rbuf.p + c->rbuf.off + c->rbuf.len, c->rbuf.cap - c->rbuf.off - c->rbuf.len };
    union {
        char space[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.space, .msg_controllen = sizeof cbuf.space };
    ssize_t n = recvmsg(c->fd, &mh, 0);
    if (n > 0) {
        c->rbuf.len += (size_t)n;
        c->rx_ns = 0;
        if (c->index >= 0)
            st.sub_reads++;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                c->rx_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - realtime_offset - t_origin;
            }
        }
    } else if (n == 0) {
        eof = 1;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return;
    } else {
        conn_lost(c, strerror(errno));
        return;
    }

    switch (c->state) {
    case C_HS_READING: {
        int r = http_handshake_read(c, eof);
        if (r == 0)
            return;
        conn_close_fd(c);
        if (r < 0) {
            conn_lost(c, "handshake failed");
            return;
        }
        if (conn_open_socket(c) < 0) {
            char why[128];
            snprintf(why, sizeof why, "connect: %s", strerror(errno));
            conn_lost(c, why);
            return;
        }
        c->state = C_WS_CONNECTING;
        return;
    }
    case C_WS_UPGRADING: {
        char *p = c->rbuf.p + c->rbuf.off;
        const char *hend = find_crlf2(p, c->rbuf.len);
        if (!hend) {
            if (eof)
                conn_lost(c, "connection closed during the WebSocket upgrade");
            return;
        }
        size_t hlen = (size_t)(hend - p) + 4;
        char val[64];
        if (strncmp(p, "HTTP/1.1 101", 12) != 0 || !header_value(p, hlen, "Upgrade", val, sizeof val) ||
            strcasecmp(val, "websocket") != 0) {
            char why[200];
            snprintf(why, sizeof why, "upgrade refused: %.*s", (int)(hlen > 120 ? 120 : hlen), p);
            conn_lost(c, why);
            return;
        }
        buf_consume(&c->rbuf, hlen);
        on_ws_open(c);
        conn_flush(c);
        if (c->fd >= 0)
            ws_read_frames(c);
        break;
    }
    case C_OPEN:
    case C_CLOSING:
        ws_read_frames(c);
        break;
    default:
        break;
    }
    if (c->fd >= 0)
        conn_flush(c);
    if (eof && c->fd >= 0)
        conn_lost(c, "server closed the connection");
}

static void poll_once(int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(epfd, evs, 256, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        /* The tag carries the fd too: an event for a socket we already
         * replaced (handshake -> WebSocket) in this batch is dropped. */
        uint64_t tag = evs[i].data.u64;
        uint32_t slot = (uint32_t)tag;
        conn_t *c = slot == 0 ? &pub : &subs[slot - 1];
        if (c->fd < 0 || c->fd != (int)(tag >> 32))
            continue;
        if (evs[i].events & EPOLLOUT)
            on_writable(c);
        if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            on_readable(c);
    }
}

/* ---- publishing ----------------------------------------------------------- */

static char secret_json[512];
static int64_t *pub_t;        /* per sequence number: when it was published */

static void publish_one(void)
{
    if (published >= total_seqs || pub.state != C_OPEN)
        return;
    int seq = published++;
    int64_t t = now_ns();
    /* Size the pad so that the delivered message (the publish minus clientId
     * and ext, as Faye delivers it) is opt.msg_size bytes. */
    char head[128];
    int hn = snprintf(head, sizeof head, "{\"channel\":\"%s\",\"data\":{\"seq\":%d,\"t\":%" PRId64 ",\"pad\":\"",
                      CHANNEL, seq, t);
    char tail[64];
    int tn = snprintf(tail, sizeof tail, "\"},\"id\":\"%x\"}", pub.next_id);
    int pad = opt.msg_size - hn - tn;
    if (pad < 0)
        pad = 0;
    char msg[8192];
    int n = snprintf(msg, sizeof msg, "[{\"channel\":\"%s\",\"data\":{\"seq\":%d,\"t\":%" PRId64 ",\"pad\":\"%.*s\"},"
                     "\"clientId\":\"%s\",\"id\":\"%x\"",
                     CHANNEL, seq, t, pad,
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                     pub.client_id, pub.next_id++);
    if (opt.raw)               /* what a Bayeux server would deliver, sent as is */
        n = snprintf(msg, sizeof msg, "[%s%.*s%s]", head, pad,
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                     tail);
    if (secret_json[0] && !opt.raw)
        n += snprintf(msg + n, sizeof msg - (size_t)n, ",\"ext\":{\"secret\":\"%s\"}", secret_json);
    if (!opt.raw)
        n += snprintf(msg + n, sizeof msg - (size_t)n, "}]");
    remaining[seq] = (uint32_t)st.ready;
    pub_t[seq] = t;
    if (st.ready > 0)
        inflight++;
    ws_send(&pub, 1, msg, (size_t)n);
    conn_flush(&pub);
}

/* ---- phases --------------------------------------------------------------- */

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

/* Runs the loop until done() says so, the deadline passes, or (with a stall
 * timeout) nothing has been delivered for that long. Returns 1 when done. */
static int run_until(int (*done)(void), void (*tick)(void), double deadline_s, double stall_s, int64_t *next_due)
{
    int64_t start = now_ns();
    int64_t deadline = start + (int64_t)(deadline_s * 1e9);
    int64_t progress_mark = start;
    uint64_t last_count = st.deliveries;
    for (;;) {
        if (tick)
            tick();
        if (done())
            return 1;
        int64_t now = now_ns();
        if (now >= deadline)
            return 0;
        if (st.deliveries != last_count) {
            last_count = st.deliveries;
            progress_mark = now;
        } else if (stall_s > 0 && now - progress_mark > (int64_t)(stall_s * 1e9)) {
            return 0;
        }
        int64_t wait = deadline - now;
        if (next_due && *next_due > now && *next_due - now < wait)
            wait = *next_due - now;
        if (wait > 100000000)
            wait = 100000000;
        int ms = (int)((wait + 999999) / 1000000);
        poll_once(ms < 0 ? 0 : ms);
    }
}

static int done_setup(void)
{
    return st.setups_active == 0 && st.next_setup >= opt.subs && pub.state != C_HS_CONNECTING &&
           pub.state != C_HS_READING && pub.state != C_WS_CONNECTING && pub.state != C_WS_UPGRADING;
}

static int done_never(void)
{
    return 0;
}

static int done_drained(void)
{
    return inflight == 0;
}

static int done_final(void)
{
    /* The reference acknowledges nothing. */
    return inflight == 0 && (opt.raw || st.pub_acks + st.pub_nacks >= (uint64_t)published);
}

/* A message lost in an earlier phase must not shrink this phase's window or
 * keep it from ending, so phases count only their own messages. */
static void begin_phase(void)
{
    phase_first = published;
    phase_done = 0;
}

static int phase_inflight(void)
{
    return published - phase_first - phase_done;
}

static int tp_target;

static void tick_throughput(void)
{
    while (published < tp_target && phase_inflight() < opt.window && pub.state == C_OPEN)
        publish_one();
}

static int done_throughput(void)
{
    return published >= tp_target && phase_inflight() == 0;
}

static int64_t lat_next_due, lat_interval_ns;
static int lat_target;

static void tick_latency(void)
{
    int64_t now = now_ns();
    while (published < lat_target && now >= lat_next_due && pub.state == C_OPEN) {
        publish_one();
        lat_next_due += lat_interval_ns;
    }
    if (published >= lat_target)
        lat_next_due = 0;     /* nothing more to schedule: do not wake for it */
}

static int done_latency(void)
{
    return published >= lat_target && phase_inflight() == 0;
}

/* GET /stats (our server only; Node Faye has none), blocking with a 5 s
 * timeout: called while the load is idle. Prints the body on one line, and
 * returns its "clients" figure (-1 when unknown). */
static long print_server_stats_quiet(int quiet);

static long print_server_stats(void)
{
    return print_server_stats_quiet(0);
}

static long print_server_stats_quiet(int quiet)
{
    if (!opt.secret)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (fd < 0 || connect(fd, (struct sockaddr *)&server_addr[0], sizeof server_addr[0]) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[1024], resp[65536];
    int n = snprintf(req, sizeof req, "GET /stats HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                     "Connection: close\r\n\r\n", opt.port, opt.secret);
    size_t len = 0;
    if (write(fd, req, (size_t)n) == n) {
        ssize_t r;
        while (len < sizeof resp - 1 && (r = read(fd, resp + len, sizeof resp - 1 - len)) > 0) {
            len += (size_t)r;
            const char *h = find_crlf2(resp, len);
            char val[32];
            if (h && header_value(resp, (size_t)(h - resp) + 4, "Content-Length", val, sizeof val) &&
                len >= (size_t)(h - resp) + 4 + (size_t)atol(val))
                break;
        }
    }
    close(fd);
    resp[len] = 0;
    char *body = strstr(resp, "\r\n\r\n");
    if (len < 12 || memcmp(resp, "HTTP/1.1 200", 12) != 0 || !body) {
        if (!quiet)
            printf("server_stats unavailable: %.60s\n", len ? strtok(resp, "\r") : "no response");
        return -1;
    }
    for (char *q = body + 4; *q; q++)
        if (*q == '\n' || *q == '\r')
            *q = ' ';
    if (!quiet)
        printf("server_stats %s\n", body + 4);
    const char *cl = strstr(body + 4, "\"clients\":");
    return cl ? strtol(cl + 10, NULL, 10) : -1;
}

/* ---- the soak (--churn) ----------------------------------------------------- */

static int64_t churn_end, churn_next_pub, churn_next_drop, churn_next_maint, churn_pub_ns, churn_next_due;
static int drop_mode;

static int slice_back(void)
{
    return rq_len == 0 && st.resubs_active == 0 && st.closing == 0;
}

/* Soak: leave as a client would, in one of four ways (in turn): close the
 * socket (FIN), reset it (RST), send a WebSocket close, or /meta/disconnect
 * and then a WebSocket close. The last two wait for the server's close. */
static void churn_leave(conn_t *c, int mode)
{
    st.drops[mode]++;
    if (mode == 1) {
        struct linger lg = { 1, 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (mode <= 1) {
        conn_close_fd(c);
        c->state = C_DEAD;
        return;
    }
    if (mode == 3) {
        char msg[300];
        int n = snprintf(msg, sizeof msg, "[{\"channel\":\"/meta/disconnect\",\"clientId\":\"%s\",\"id\":\"%x\"}]",
                         c->client_id, c->next_id++);
        ws_send(c, 1, msg, (size_t)n);
    }
    static const char normal[2] = { 0x03, (char)0xe8 };   /* 1000 */
    ws_send(c, 8, normal, 2);
    c->closing = 1;
    c->state = C_CLOSING;
    c->close_due = now_ns() + 5000000000LL;
    st.closing++;
    conn_flush(c);             /* a failed write lands in conn_lost like a close */
}

static void churn_drop(conn_t *c)
{
    int mode = drop_mode++ % 4;
    churn_leave(c, mode);
    if (mode <= 1)
        churn_requeue(c);
}

/* A server that never answers our close frame is a leak on its side; stop
 * waiting after close_due and count it. */
static void churn_close_timeouts(int64_t now)
{
    for (int i = 0; i < opt.subs; i++) {
        conn_t *c = &subs[i];
        if (c->state != C_CLOSING || now < c->close_due)
            continue;
        st.close_timeouts++;
        st.closing--;
        record_error("close", "the server did not answer a WebSocket close within 5 s");
        conn_close_fd(c);
        c->state = C_DEAD;
        if (!shutting_down)
            churn_requeue(c);
    }
}

static void tick_churn(void)
{
    int64_t now = now_ns();
    while (now < churn_end && now >= churn_next_pub && published < total_seqs) {
        publish_one();
        churn_next_pub += churn_pub_ns;
    }
    if (st.slice_out_ns && slice_back()) {
        int64_t took = now - st.slice_out_ns;
        st.slice_sum_ns += took;
        if (took > st.slice_max_ns)
            st.slice_max_ns = took;
        st.slice_out_ns = 0;
    }
    /* Self-paced: the next slice leaves only once the last one is back, so
     * that a slow server shows as fewer cycles (churn_late counts the waits),
     * not as gaps longer than its history. */
    static int64_t late_for;
    if (now < churn_end && now >= churn_next_drop && st.slice_out_ns && late_for != churn_next_drop) {
        st.churn_late++;
        late_for = churn_next_drop;
    }
    if (now < churn_end && now >= churn_next_drop && !st.slice_out_ns) {
        int want = (int)(opt.subs * opt.churn_slice + 0.5);
        if (want < 1)
            want = 1;
        for (int k = 0, tries = 0; k < want && tries < want * 8; tries++) {
            conn_t *c = &subs[rnd32() % (uint32_t)opt.subs];
            if (c->state != C_OPEN || !c->ready)
                continue;
            churn_drop(c);
            k++;
        }
        st.churn_cycles++;
        st.slice_out_ns = now;
        churn_next_drop = now + (int64_t)(opt.churn_interval * 1e9);
    }
    while (rq_len > 0 && st.resubs_active < opt.setup_concurrency) {
        conn_t *c = &subs[rq[rq_head]];
        rq_head = (rq_head + 1) % opt.subs;
        rq_len--;
        st.resubs_active++;
        c->closing = 0;
        c->client_id[0] = 0;
        conn_begin(c);         /* a failure comes back through setup_done */
    }
    if (now >= churn_next_maint) {
        churn_close_timeouts(now);
        churn_next_maint = now + 100000000;
    }
    churn_next_due = churn_next_maint;
    if (now < churn_end) {
        if (churn_next_pub < churn_next_due)
            churn_next_due = churn_next_pub;
        if (churn_next_drop < churn_next_due)
            churn_next_due = churn_next_drop;
    }
}

static uint64_t churn_final_offset(void)
{
    return global_base + (uint64_t)published;
}

/* Everyone back and complete. Scanning 10,000 subscribers on every wake-up
 * would cost more than the deliveries: at most every 50 ms. */
static int done_churn(void)
{
    static int64_t next_check;
    int64_t now = now_ns();
    if (now < churn_end || now < next_check)
        return 0;
    next_check = now + 50000000;
    if (rq_len > 0 || st.resubs_active > 0 || st.closing > 0 || st.pub_acks + st.pub_nacks < (uint64_t)published)
        return 0;
    uint64_t final = churn_final_offset();
    for (int i = 0; i < opt.subs; i++) {
        const conn_t *c = &subs[i];
        if (c->state == C_DEAD || !c->has_base)
            continue;
        if (c->received < final - c->base_off)
            return 0;
    }
    return 1;
}

static int done_closed(void)
{
    return st.closing == 0;
}

static void tick_closing(void)
{
    int64_t now = now_ns();
    if (now >= churn_next_maint) {
        churn_close_timeouts(now);
        churn_next_maint = now + 100000000;
    }
}

static void print_server_probe(const char *prefix)
{
    printf("%s_fds %d\n%s_rss_kib %ld\n", prefix, proc_fd_count(opt.server_pid), prefix, proc_rss_kib(opt.server_pid));
}

/* Connected already; the baseline was taken before anyone connected. */
static int run_soak(int base_fds, long base_rss)
{
    print_server_probe("peak");
    print_server_stats();
    rq = calloc((size_t)opt.subs, sizeof *rq);
    if (!rq)
        die("out of memory");

    int64_t t0 = now_ns();
    churn_end = t0 + (int64_t)(opt.churn_seconds * 1e9);
    churn_pub_ns = (int64_t)(1e9 / opt.churn_rate);
    churn_next_pub = t0;
    churn_next_drop = t0 + (int64_t)(opt.churn_interval * 1e9);
    churn_next_maint = t0;
    /* The churn, then the drain: the last drops reconnect and recover, the
     * last messages arrive. Bounded: 30 s past the churn. */
    int drained = run_until(done_churn, tick_churn, opt.churn_seconds + 30, 0, &churn_next_due);
    double churned = secs(now_ns() - t0);

    uint64_t final = churn_final_offset(), expected = 0, lost = 0;
    int connected = 0, never = 0;
    for (int i = 0; i < opt.subs; i++) {
        conn_t *c = &subs[i];
        if (!c->has_base) {
            never++;
            continue;
        }
        expected += final - c->base_off;
        lost += final - c->base_off - c->received;
        connected += c->state == C_OPEN && c->ready;
    }
    printf("churn_seconds %.1f\n", opt.churn_seconds);
    printf("churn_and_drain_seconds %.1f\n", churned);
    printf("drained %d\n", drained);
    printf("churn_cycles %" PRIu64 "\n", st.churn_cycles);
    printf("churn_late %" PRIu64 "\n", st.churn_late);
    if (st.churn_cycles > 0) {
        printf("slice_back_max_ms %.0f\n", st.slice_max_ns / 1e6);
        printf("slice_back_avg_ms %.0f\n", st.slice_sum_ns / 1e6 / (double)st.churn_cycles);
    }
    for (int m = 0; m < 4; m++)
        printf("drops_%s %" PRIu64 "\n", drop_names[m], st.drops[m]);
    printf("reconnects %" PRIu64 "\n", st.reconnects);
    printf("reconnect_retries %" PRIu64 "\n", st.reconnect_retries);
    printf("dead_subs %d\n", st.dead_subs);
    printf("never_subscribed %d\n", never);
    printf("recovered %" PRIu64 "\n", st.recovered);
    printf("not_recovered %" PRIu64 "\n", st.not_recovered);
    printf("close_timeouts %" PRIu64 "\n", st.close_timeouts);
    printf("connected_at_end %d\n", connected);
    printf("publish_rate %.1f\n", opt.churn_rate);
    printf("published %d\n", published);
    printf("publish_acks %" PRIu64 "\n", st.pub_acks);
    printf("publish_nacks %" PRIu64 "\n", st.pub_nacks);
    printf("first_offset %" PRIu64 "\nfinal_offset %" PRIu64 "\n", global_base + 1, final);
    printf("deliveries %" PRIu64 "\n", st.deliveries);
    printf("expected %" PRIu64 "\n", expected);
    printf("lost %" PRIu64 "\n", lost);
    printf("duplicates %" PRIu64 "\n", st.dups);
    printf("out_of_order %" PRIu64 "\n", st.out_of_order);
    printf("bogus %" PRIu64 "\n", st.bogus);
    printf("offset_mismatch %" PRIu64 "\n", st.offset_mismatch);
    printf("epoch_mismatch %" PRIu64 "\n", st.epoch_mismatch);
    printf("malformed %" PRIu64 "\n", st.malformed);
    printf("unexpected_closes %d\n", st.unexpected_closes);
    printf("bayeux_errors %" PRIu64 "\n", st.bayeux_errors);
    printf("connect_replies %" PRIu64 "\n", st.connect_replies);
    printf("first_error %s\n", st.first_error[0] ? st.first_error : "-");
    print_server_probe("churn_end");

    /* Everyone leaves, in the same four ways; then the server must give back
     * what it took once it has expired the sessions left without a goodbye. */
    shutting_down = 1;
    for (int i = 0; i < opt.subs; i++) {
        conn_t *c = &subs[i];
        if (c->state == C_OPEN)
            churn_leave(c, i % 4);
        else if (c->state != C_CLOSING)
            conn_close_fd(c);
    }
    run_until(done_closed, tick_closing, 6, 0, &churn_next_maint);
    for (int i = 0; i < opt.subs; i++)
        conn_close_fd(&subs[i]);
    conn_close_fd(&pub);

    /* Until the sessions are expired (clients 0) and fds and RSS are back
     * within the slack, or settle_seconds. fds are counted before each /stats
     * request, whose own connection is closed 250 ms before the next count. */
    int64_t s0 = now_ns();
    int fds;
    long rss, clients;
    for (;;) {
        fds = proc_fd_count(opt.server_pid);
        rss = proc_rss_kib(opt.server_pid);
        clients = print_server_stats_quiet(1);
        int back = fds >= 0 && rss >= 0 && fds <= base_fds + opt.fd_slack && rss <= base_rss + opt.rss_slack_kib;
        if ((back && clients <= 0) || secs(now_ns() - s0) >= opt.settle_seconds)
            break;
        usleep(250000);
    }
    printf("settle_seconds %.1f\n", secs(now_ns() - s0));
    printf("end_clients %ld\n", clients);
    printf("base_fds %d\nbase_rss_kib %ld\n", base_fds, base_rss);
    printf("end_fds %d\nend_rss_kib %ld\n", fds, rss);
    print_server_stats();      /* after counting: it opens a connection itself */
    fflush(stdout);
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile(const uint32_t *v, size_t n, double q)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port P [--subs N] [--messages M] [--window W] [--secret S]\n"
            "               [--server-pid PID] [--latency-seconds S] [--latency-rate D]\n"
            "               [--hold SECONDS] [--size BYTES] [--mount /faye]\n"
            "               [--phase-timeout S] [--concurrency C]\n"
            "               [--port2 P] [--server-pid2 PID]       (a second node; subscribers alternate)\n"
            "               [--raw 1]                             (the reference broadcaster: no Bayeux)\n"
            "               [--server-cpu N]                      (also report CPU N's busy time per delivery)\n"
            "       loadgen --port P --churn SECONDS [--subs N] [--churn-rate MSGS] [--churn-interval S]\n"
            "               [--churn-slice FRACTION] [--settle S] [--fd-slack N] [--rss-slack-kib K]\n"
            "               [--server-pid PID] [--secret S]       (the soak: bin/soak)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--subs")) opt.subs = atoi(v);
        else if (!strcmp(a, "--messages")) opt.messages = atoi(v);
        else if (!strcmp(a, "--window")) opt.window = atoi(v);
        else if (!strcmp(a, "--secret")) opt.secret = v;
        else if (!strcmp(a, "--server-pid")) opt.server_pid = atoi(v);
        else if (!strcmp(a, "--latency-seconds")) opt.latency_seconds = atof(v);
        else if (!strcmp(a, "--latency-rate")) opt.latency_rate = atof(v);
        else if (!strcmp(a, "--hold")) opt.hold_seconds = atof(v);
        else if (!strcmp(a, "--size")) opt.msg_size = atoi(v);
        else if (!strcmp(a, "--mount")) opt.mount = v;
        else if (!strcmp(a, "--phase-timeout")) opt.phase_timeout = atof(v);
        else if (!strcmp(a, "--concurrency")) opt.setup_concurrency = atoi(v);
        else if (!strcmp(a, "--port2")) opt.port2 = atoi(v);
        else if (!strcmp(a, "--server-pid2")) opt.server_pid2 = atoi(v);
        else if (!strcmp(a, "--churn")) opt.churn_seconds = atof(v);
        else if (!strcmp(a, "--churn-rate")) opt.churn_rate = atof(v);
        else if (!strcmp(a, "--churn-interval")) opt.churn_interval = atof(v);
        else if (!strcmp(a, "--churn-slice")) opt.churn_slice = atof(v);
        else if (!strcmp(a, "--settle")) opt.settle_seconds = atof(v);
        else if (!strcmp(a, "--fd-slack")) opt.fd_slack = atoi(v);
        else if (!strcmp(a, "--rss-slack-kib")) opt.rss_slack_kib = atol(v);
        else if (!strcmp(a, "--raw")) opt.raw = atoi(v);
        else if (!strcmp(a, "--server-cpu")) opt.server_cpu = atoi(v);
        else usage();
        i++;
    }
    if (opt.secret && json_escape(secret_json, sizeof secret_json, opt.secret) < 0)
        die("--secret is too long");
    if (opt.port <= 0 || opt.subs <= 0 || opt.messages < 0 || opt.window <= 0 || opt.msg_size > 4000 ||
        opt.port2 < 0)
        usage();
    if (opt.raw && (opt.port2 > 0 || opt.churn_seconds > 0))
        usage();
    if (opt.churn_seconds > 0 && (opt.churn_rate <= 0 || opt.churn_interval <= 0 || opt.churn_slice <= 0 ||
                                  opt.churn_slice > 1 || !opt.server_pid))
        usage();

    setvbuf(stdout, NULL, _IOLBF, 0);   /* partial results survive a kill */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.subs + 64)
        die("RLIMIT_NOFILE is %lu, need %d: raise it (ulimit -n)", (unsigned long)rl.rlim_cur, opt.subs + 64);

    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t_origin = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - 1000000000;
    struct timespec rt, m2;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &m2);
    realtime_offset = ((int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec) -
                      ((int64_t)m2.tv_sec * 1000000000 + m2.tv_nsec);
    rng_state ^= (uint64_t)ts.tv_nsec * 0x2545F4914F6CDD1Dull ^ (uint64_t)getpid();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    for (int k = 0; k < 2; k++) {
        server_addr[k].sin_family = AF_INET;
        server_addr[k].sin_port = htons((uint16_t)(k ? opt.port2 : opt.port));
        server_addr[k].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }

    int lat_msgs = 0;
    double lat_rate_msgs = opt.latency_rate / opt.subs;   /* msgs/s so that deliveries/s = latency_rate */
    if (opt.latency_seconds > 0)
        lat_msgs = (int)(lat_rate_msgs * opt.latency_seconds + 0.5);
    if (opt.latency_seconds > 0 && lat_msgs < 1)
        lat_msgs = 1;
    total_seqs = 1 + opt.messages + lat_msgs + (opt.hold_seconds > 0 ? 1 : 0);
    if (opt.churn_seconds > 0)
        total_seqs = (int)(opt.churn_rate * opt.churn_seconds) + 2;
    remaining = calloc((size_t)total_seqs, sizeof *remaining);
    first_rx = calloc((size_t)total_seqs, sizeof *first_rx);
    last_rx = calloc((size_t)total_seqs, sizeof *last_rx);
    pub_t = calloc((size_t)total_seqs, sizeof *pub_t);
    if (!first_rx || !last_rx || !pub_t)
        die("out of memory");
    subs = calloc((size_t)opt.subs, sizeof *subs);
    size_t bm = ((size_t)total_seqs + 7) / 8;
    uint8_t *bitmaps = calloc((size_t)opt.subs, bm);
    if (!remaining || !subs || !bitmaps)
        die("out of memory");
    for (int i = 0; i < opt.subs; i++) {
        subs[i].fd = -1;
        subs[i].index = i;
        subs[i].seen = bitmaps + (size_t)i * bm;
        subs[i].node = opt.port2 > 0 ? i & 1 : 0;
    }
    pub.fd = -1;
    pub.index = -1;

    printf("subs %d\n", opt.subs);
    long rss0 = server_rss_kib();
    int fds0 = opt.server_pid ? proc_fd_count(opt.server_pid) : -1;

    /* Setup: the publisher and all subscribers, a bounded number at a time. */
    int64_t t_setup = now_ns();
    conn_begin(&pub);
    start_next_setups();
    int setup_ok = run_until(done_setup, NULL, opt.phase_timeout + opt.subs / 200.0, 0, NULL);
    printf("setup_seconds %.3f\n", secs(now_ns() - t_setup));
    /* Subscribers still setting up at the deadline would miss messages and
     * count as losses: drop them, they count as setup failures instead. */
    shutting_down = 1;
    for (int i = 0; i < opt.subs; i++) {
        if (!subs[i].ready && subs[i].state != C_DEAD && subs[i].state != C_IDLE) {
            conn_close_fd(&subs[i]);
            subs[i].state = C_DEAD;
        }
    }
    shutting_down = 0;
    printf("ready %d\n", st.ready);
    printf("setup_failures %d\n", opt.subs - st.ready);
    if (!setup_ok)
        printf("setup_timeout 1\n");
    if (pub.state != C_OPEN) {
        printf("error publisher could not connect\n");
        printf("first_error %s\n", st.first_error[0] ? st.first_error : "-");
        return 1;
    }
    if (opt.port2 > 0) {
        int on2 = 0;
        for (int i = 0; i < opt.subs; i++)
            on2 += subs[i].ready && subs[i].node == 1;
        printf("ready_node1 %d\n", on2);
    }
    if (opt.churn_seconds > 0)
        return run_soak(fds0, rss0);

    /* Idle: let the server settle, then measure its memory per connection
     * and what N idle connections cost it in CPU (timers, heartbeats). */
    run_until(done_never, NULL, 0.5, 0, NULL);
    int64_t icpu0 = server_cpu_us(), it0 = now_ns();
    run_until(done_never, NULL, 1.0, 0, NULL);
    int64_t icpu1 = server_cpu_us();
    if (icpu0 >= 0 && icpu1 >= icpu0)
        printf("idle_server_cpu_pct %.2f\n", 100.0 * (double)(icpu1 - icpu0) * 1000.0 / (double)(now_ns() - it0));
    long rss1 = server_rss_kib();
    if (rss0 > 0 && rss1 > 0 && st.ready > 0) {
        printf("rss_before_kib %ld\nrss_idle_kib %ld\n", rss0, rss1);
        printf("mem_per_conn_bytes %.0f\n", (double)(rss1 - rss0) * 1024.0 / st.ready);
    }

    /* Warm-up: one message must reach everyone before timing starts. */
    begin_phase();
    tp_target = 1;
    int warm_ok = run_until(done_throughput, tick_throughput, 15, 0, NULL);
    printf("warmup_ok %d\n", warm_ok);

    /* Throughput: as fast as the in-flight window allows. */
    if (opt.messages > 0) {
        uint64_t d0 = st.deliveries, b0 = st.sub_rx_bytes, f0 = st.sub_rx_frames, r0 = st.sub_reads;
        int64_t scpu0 = server_cpu_us(), lcpu0 = self_cpu_us();
        int64_t tcpu0 = opt.server_pid ? proc_stat_cpu_us(opt.server_pid) : -1;
        int64_t sirq0 = -1, sirq1 = -1;
        int ksirqd = opt.server_cpu >= 0 ? proc_ksoftirqd_pid(opt.server_cpu) : 0;
        int64_t ks0 = ksirqd ? proc_stat_cpu_us(ksirqd) : -1;
        int64_t core0 = opt.server_cpu >= 0 ? proc_core_busy_us(opt.server_cpu, &sirq0) : -1;
        int64_t t0 = now_ns();
        begin_phase();
        tp_target = published + opt.messages;
        int ok = run_until(done_throughput, tick_throughput, opt.phase_timeout, opt.stall_timeout, NULL);
        int64_t t1 = st.deliveries > d0 ? st.last_delivery_ns : now_ns();
        int64_t scpu1 = server_cpu_us(), lcpu1 = self_cpu_us();
        int64_t tcpu1 = opt.server_pid ? proc_stat_cpu_us(opt.server_pid) : -1;
        int64_t core1 = opt.server_cpu >= 0 ? proc_core_busy_us(opt.server_cpu, &sirq1) : -1;
        int64_t ks1 = ksirqd ? proc_stat_cpu_us(ksirqd) : -1;
        uint64_t d = st.deliveries - d0;
        double el = secs(t1 - t0);
        printf("tp_complete %d\n", ok);
        printf("tp_messages %d\n", opt.messages);
        printf("tp_deliveries %" PRIu64 "\n", d);
        printf("tp_seconds %.3f\n", el);
        printf("deliveries_per_sec %.0f\n", el > 0 ? (double)d / el : 0);
        if (scpu0 >= 0 && scpu1 >= scpu0 && d > 0)   /* not when the server died meanwhile */
            printf("server_cpu_us_per_delivery %.3f\n", (double)(scpu1 - scpu0) / (double)d);
        if (el > 0)
            printf("loadgen_cpu_pct %.0f\n", 100.0 * (double)(lcpu1 - lcpu0) / 1e6 / el);
        if (d > 0) {
            printf("loadgen_cpu_us_per_delivery %.3f\n", (double)(lcpu1 - lcpu0) / (double)d);
            printf("bytes_per_delivery %.0f\n", (double)(st.sub_rx_bytes - b0) / (double)d);
            /* Batching, as the subscribers see it: below 1, several
             * deliveries shared a WebSocket message or a read. */
            printf("ws_messages_per_delivery %.3f\n", (double)(st.sub_rx_frames - f0) / (double)d);
            printf("sub_reads_per_delivery %.3f\n", (double)(st.sub_reads - r0) / (double)d);
            /* The same server CPU from /proc/PID/stat utime+stime (tick
             * resolution), and the whole server core from /proc/stat:
             * softirq and anyone else who ran there included. */
            if (tcpu0 >= 0 && tcpu1 >= tcpu0)
                printf("server_stat_cpu_us_per_delivery %.3f\n", (double)(tcpu1 - tcpu0) / (double)d);
            if (core0 >= 0 && core1 >= core0) {
                printf("server_core_busy_us_per_delivery %.3f\n", (double)(core1 - core0) / (double)d);
                printf("server_core_softirq_us_per_delivery %.3f\n", (double)(sirq1 - sirq0) / (double)d);
            }
            /* softirq work deferred to ksoftirqd: on the server's core, not in its process */
            if (ks0 >= 0 && ks1 >= ks0)
                printf("ksoftirqd_us_per_delivery %.3f\n", (double)(ks1 - ks0) / (double)d);
        }
        long rss = server_rss_kib();
        if (rss > 0)
            printf("rss_after_tp_kib %ld\n", rss);
        if (!ok)
            run_until(done_drained, NULL, 5, 2, NULL);   /* late stragglers, bounded */
    }

    /* Latency: a fixed total delivery rate, publish -> delivery times. */
    if (lat_msgs > 0) {
        begin_phase();
        lat_first_seq = published;
        lat_interval_ns = (int64_t)(1e9 / lat_rate_msgs);
        lat_next_due = now_ns();
        lat_target = published + lat_msgs;
        uint64_t d0 = st.deliveries;
        int64_t scpu0 = server_cpu_us(), t0 = now_ns();
        int ok = run_until(done_latency, tick_latency, opt.latency_seconds + 15, 0, &lat_next_due);
        int64_t scpu1 = server_cpu_us();
        if (scpu0 >= 0 && scpu1 >= scpu0 && st.deliveries > d0) {
            /* at a low rate: how much CPU a delivery costs when nothing batches */
            printf("lat_server_cpu_us_per_delivery %.3f\n", (double)(scpu1 - scpu0) / (double)(st.deliveries - d0));
            printf("lat_server_cpu_pct %.1f\n", 100.0 * (double)(scpu1 - scpu0) * 1000.0 / (double)(now_ns() - t0));
        }
        printf("lat_complete %d\n", ok);
        printf("lat_rate_msgs_per_sec %.3f\n", lat_rate_msgs);
        printf("lat_samples %zu\n", lat_n);
        if (lat_n > 0) {
            qsort(lat_arr, lat_n, sizeof *lat_arr, cmp_u32);
            qsort(lat_app, lat_n, sizeof *lat_app, cmp_u32);
            printf("lat_p50_us %.0f\n", percentile(lat_arr, lat_n, 0.50));
            printf("lat_p99_us %.0f\n", percentile(lat_arr, lat_n, 0.99));
            printf("lat_max_us %u\n", lat_arr[lat_n - 1]);
            printf("app_lat_p50_us %.0f\n", percentile(lat_app, lat_n, 0.50));
            printf("app_lat_p99_us %.0f\n", percentile(lat_app, lat_n, 0.99));
            printf("lat_without_kernel_stamp %" PRIu64 "\n", st.no_rx_stamp);
            /* Per message: when the first subscriber got it, and how long
             * the fan-out took from first to last (medians over messages). */
            size_t k = 0;
            uint32_t *fst = calloc((size_t)lat_msgs, sizeof *fst), *spr = calloc((size_t)lat_msgs, sizeof *spr);
            for (int q = lat_first_seq; q < published && fst && spr; q++) {
                if (!first_rx[q])
                    continue;
                fst[k] = (uint32_t)((first_rx[q] - pub_t[q]) / 1000);
                spr[k] = (uint32_t)((last_rx[q] - first_rx[q]) / 1000);
                k++;
            }
            if (k > 0) {
                qsort(fst, k, sizeof *fst, cmp_u32);
                qsort(spr, k, sizeof *spr, cmp_u32);
                printf("lat_first_sub_p50_us %.0f\n", percentile(fst, k, 0.5));
                printf("lat_first_sub_max_us %u\n", fst[k - 1]);
                printf("lat_fanout_spread_p50_us %.0f\n", percentile(spr, k, 0.5));
                printf("lat_fanout_spread_max_us %u\n", spr[k - 1]);
            }
            free(fst);
            free(spr);
        }
        lat_first_seq = -1;
    }

    /* Hold: stay connected and idle, then check that everyone still receives. */
    if (opt.hold_seconds > 0) {
        int closes0 = st.unexpected_closes;
        int64_t hcpu0 = server_cpu_us(), ht0 = now_ns();
        run_until(done_never, NULL, opt.hold_seconds, 0, NULL);
        int64_t hcpu1 = server_cpu_us();
        /* The whole hold, heartbeats included: each subscriber's held
         * /meta/connect is answered and sent again once per server timeout. */
        if (hcpu0 >= 0 && hcpu1 >= hcpu0)
            printf("hold_server_cpu_pct %.3f\n", 100.0 * (double)(hcpu1 - hcpu0) * 1000.0 / (double)(now_ns() - ht0));
        print_server_stats();
        begin_phase();
        tp_target = published + 1;
        int ok = run_until(done_throughput, tick_throughput, 30, 0, NULL);
        printf("hold_seconds %.1f\n", opt.hold_seconds);
        printf("hold_closes %d\n", st.unexpected_closes - closes0);
        printf("hold_delivered_ok %d\n", ok);
        long rss2 = server_rss_kib();
        if (rss2 > 0)
            printf("rss_after_hold_kib %ld\n", rss2);
    }

    /* Loss: every ready subscriber should have every published message once. */
    run_until(done_final, NULL, 3, 2, NULL);
    uint64_t lost = 0;
    int ready_subs = 0;
    for (int i = 0; i < opt.subs; i++) {
        if (!subs[i].ready)
            continue;
        ready_subs++;
        lost += (uint64_t)published - subs[i].received;
    }
    printf("published %d\n", published);
    printf("publish_acks %" PRIu64 "\n", st.pub_acks);
    printf("publish_nacks %" PRIu64 "\n", st.pub_nacks);
    printf("deliveries %" PRIu64 "\n", st.deliveries);
    printf("expected %" PRIu64 "\n", (uint64_t)published * (uint64_t)ready_subs);
    printf("lost %" PRIu64 "\n", lost);
    printf("duplicates %" PRIu64 "\n", st.dups);
    printf("bogus %" PRIu64 "\n", st.bogus);
    printf("malformed %" PRIu64 "\n", st.malformed);
    printf("unexpected_closes %d\n", st.unexpected_closes);
    printf("bayeux_errors %" PRIu64 "\n", st.bayeux_errors);
    printf("connect_replies %" PRIu64 "\n", st.connect_replies);
    printf("offsets_checked %" PRIu64 "\n", st.offsets_checked);
    printf("deliveries_without_offset %" PRIu64 "\n", st.no_offset);
    printf("offset_mismatch %" PRIu64 "\n", st.offset_mismatch);
    printf("epoch_mismatch %" PRIu64 "\n", st.epoch_mismatch);
    printf("first_error %s\n", st.first_error[0] ? st.first_error : "-");

    shutting_down = 1;
    for (int i = 0; i < opt.subs; i++)
        conn_close_fd(&subs[i]);
    conn_close_fd(&pub);
    fflush(stdout);
    return 0;
}
