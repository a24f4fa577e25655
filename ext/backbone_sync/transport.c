/*
 * transport.c: links, deadlines and the outgoing buffer, shared by the HTTP
 * and WebSocket transports (see transport.h). Layer: transports. Thread:
 * the service thread.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "transport.h"

_Static_assert(LWS_PRE <= BS_PRE, "BS_PRE must leave room for the lws header");

#define DUE_SLACK_MS 10                     /* deadlines this close together share a wakeup */
#define MAX_DRAIN_READS 64                  /* reads of one publisher's socket at the end of a turn */

#define TLINK(d) ((bs_tlink_t *)((char *)(d) - offsetof(bs_tlink_t, deadline)))

static void on_due(lws_sorted_usec_list_t *sul);

void bs_transport_init(bs_transport_t *t, const bs_server_config_t *cfg, const bs_log_t *log,
                       bs_engine_t *engine, bs_stats_t *conn)
{
    memset(t, 0, sizeof(*t));
    t->cfg = cfg;
    t->log = log;
    t->engine = engine;
    t->conn = conn;
    bs_buf_init(&t->tx);
}

void bs_transport_cancel_timer(bs_transport_t *t)
{
    lws_sul_cancel(&t->due_tick);
    t->due_at = 0;
}

void bs_transport_free(bs_transport_t *t)
{
    bs_deadlines_free(&t->deadlines);
    bs_buf_free(&t->tx);
}

/*
 * Every wakeup of the loop costs a poll() over every socket, so the loop
 * wakes only when a deadline is due (deadlines within DUE_SLACK_MS share a
 * wakeup). An answered connect may stay in the heap until its time; it is
 * dropped then.
 */
static void schedule_due(bs_transport_t *t)
{
    bs_deadline_t *top = bs_deadlines_top(&t->deadlines);
    int64_t when, now;

    if (!top)
        return;
    when = top->due + DUE_SLACK_MS;
    if (t->due_at && t->due_at <= when)
        return;
    now = bs_now_ms();
    t->due_at = when;
    lws_sul_schedule(t->ctx, 0, &t->due_tick, on_due, (when > now ? when - now : 0) * LWS_US_PER_MS);
}

static void on_due(lws_sorted_usec_list_t *sul)
{
    bs_transport_t *t = lws_container_of(sul, bs_transport_t, due_tick);
    int64_t now = bs_now_ms();
    bs_deadline_t *d;

    t->due_at = 0;
    while ((d = bs_deadlines_top(&t->deadlines)) && d->due <= now + DUE_SLACK_MS) {
        bs_tlink_t *l = TLINK(d);

        bs_deadlines_remove(&t->deadlines, d);
        if (l->core.held) {
            lws_callback_on_writable(l->core.wsi);
        } else if (l->reading) {
            BS_STAT_ADD(&t->engine->stats, errors, 1);
            if (bs_log_verbose(t->log))
                bs_log(t->log, 'W', "request body not in within request_timeout (%d s): closed",
                       t->cfg->request_timeout);
            lws_set_timeout(l->core.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
    }
    schedule_due(t);
}

static int add_deadline(bs_transport_t *t, bs_tlink_t *l, int64_t due)
{
    if (bs_deadlines_add(&t->deadlines, &l->deadline, due))
        return 0;
    schedule_due(t);
    return 1;
}

void bs_transport_arm(bs_transport_t *t, bs_link_t *core)
{
    bs_tlink_t *l = (bs_tlink_t *)core;

    bs_deadlines_remove(&t->deadlines, &l->deadline);
    if (core->held && !add_deadline(t, l, core->held_until))
        lws_callback_on_writable(core->wsi); /* no room to wait: answer now */
}

int bs_transport_expect_body(bs_transport_t *t, bs_tlink_t *l, int64_t due)
{
    l->reading = add_deadline(t, l, due);
    return l->reading;
}

void bs_transport_body_in(bs_transport_t *t, bs_tlink_t *l)
{
    if (l->reading) {
        l->reading = 0;
        bs_deadlines_remove(&t->deadlines, &l->deadline);
    }
}

/*
 * Write coalescing. lws reads at most rx_buffer_size bytes of a socket per
 * loop turn, a few publishes; were every subscriber written at the next
 * turn, each frame would carry those few, and each turn costs a poll() over
 * every socket. So the links a turn wakes wait in a list, and at the turn's
 * end a publisher whose socket still holds bytes is read again, up to
 * MAX_DRAIN_READS reads and half of max_queue messages since the list
 * began, before the writes are asked for: one frame per subscriber then
 * carries the whole burst, up to BS_BATCH_BYTES.
 */
void bs_transport_wake(bs_transport_t *t, bs_link_t *core)
{
    bs_tlink_t *l = (bs_tlink_t *)core;

    if (l->woken)
        return;
    if (!t->woken)
        t->woken_since = __atomic_load_n(&t->engine->stats.messages_in, __ATOMIC_RELAXED);
    l->woken = 1;
    l->wake_prev = NULL;
    l->wake_next = t->woken;
    if (t->woken)
        t->woken->wake_prev = l;
    t->woken = l;
}

static void unwake(bs_transport_t *t, bs_tlink_t *l)
{
    if (!l->woken)
        return;
    if (l->wake_prev)
        l->wake_prev->wake_next = l->wake_next;
    else
        t->woken = l->wake_next;
    if (l->wake_next)
        l->wake_next->wake_prev = l->wake_prev;
    l->woken = 0;
    l->wake_prev = l->wake_next = NULL;
}

static int unread(int fd)
{
    int n = 0;

    return ioctl(fd, FIONREAD, &n) == 0 ? n : 0;
}

void bs_transport_note_input(bs_transport_t *t, struct lws *wsi, uint64_t queued_before)
{
    int fd = lws_get_socket_fd(wsi), i;

    /* Only a message that queued deliveries (a publish) makes its socket
     * worth reading again; a socket already noted is not noted twice, so
     * the drain below never adds to its own list. */
    if (!t->woken || t->ndrain == BS_MAX_DRAINED ||
        __atomic_load_n(&t->engine->stats.messages_out, __ATOMIC_RELAXED) == queued_before)
        return;
    for (i = 0; i < t->ndrain; i++)
        if (t->drain_fd[i] == fd)
            return;
    if (unread(fd) > 0)
        t->drain_fd[t->ndrain++] = fd;
}

static int drain_allowed(bs_transport_t *t)
{
    return __atomic_load_n(&t->engine->stats.messages_in, __ATOMIC_RELAXED) - t->woken_since <
           (uint64_t)t->cfg->max_queue / 2;
}

void bs_transport_turn_end(bs_transport_t *t)
{
    bs_tlink_t *l;
    int i, reads;

    /* lws_service_fd() is how lws serves one socket for an outside loop;
     * it returns 1 when the connection died, -1 when the context is going. */
    for (i = 0; i < t->ndrain; i++)
        for (reads = 0; reads < MAX_DRAIN_READS && drain_allowed(t) && unread(t->drain_fd[i]) > 0; reads++) {
            struct lws_pollfd p = { .fd = t->drain_fd[i], .events = POLLIN, .revents = POLLIN };

            if (lws_service_fd(t->ctx, &p))
                break;
        }
    t->ndrain = 0;
    while ((l = t->woken)) {
        unwake(t, l);
        lws_callback_on_writable(l->core.wsi);
    }
}

void bs_transport_link_open(bs_link_t *l, struct lws *wsi, int via)
{
    l->wsi = wsi;
    l->via = via;
}

void bs_transport_link_close(bs_transport_t *t, bs_tlink_t *l)
{
    if (!l)
        return;
    bs_deadlines_remove(&t->deadlines, &l->deadline);
    unwake(t, l);
    bs_engine_unlink(t->engine, &l->core);
    bs_buf_free(&l->core.rx);
    bs_buf_free(&l->core.out);
    free(l->core.origin);
    l->core.origin = NULL;
}

void bs_transport_lost_client(bs_link_t *l, int close)
{
    if (l->via == BS_VIA_WS && close) {
        ((bs_tlink_t *)l)->killing = 1;
        lws_set_timeout(l->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
    else
        lws_callback_on_writable(l->wsi);
}

int bs_tx_begin(bs_transport_t *t)
{
    /* A large answer (a 64 KB message and its replies) leaves no lasting buffer. */
    if (t->tx.cap > (1u << 20))
        bs_buf_free(&t->tx);
    bs_buf_reset(&t->tx);
    if (bs_buf_reserve(&t->tx, BS_PRE + 4096))
        return -1;
    memset(t->tx.ptr, 0, BS_PRE);
    t->tx.len = BS_PRE;
    return 0;
}

uint32_t bs_tx_take_frames(bs_transport_t *t, bs_client_t *c, size_t budget, int comma)
{
    uint32_t n = 0;

    while (n < c->queue.len) {
        bs_frame_t *f = bs_ring_at(&c->queue, n);

        if (n && t->tx.len + f->len > budget)
            break;
        if ((comma || n) && bs_buf_append(&t->tx, ",", 1))
            break;
        if (bs_buf_append(&t->tx, BS_FRAME_DATA(f) + 1, f->len - 2))
            break;
        n++;
    }
    bs_ring_drop(&c->queue, n);
    return n;
}
