/*
 * ws.c: Bayeux over WebSocket: reassembling messages within
 * max_message_size, and writing replies and deliveries, several queued
 * messages to one frame, a single one as its shared frame with no copy.
 * Layer: transports. Thread: the service thread.
 */
#include <string.h>

#include "transport.h"

#define MAX_WRITES_PER_CALLBACK 16

int bs_ws_receive(bs_transport_t *t, struct lws *wsi, bs_link_t *l, const void *in, size_t len)
{
    int started, done;
    uint64_t queued;

    /* What the frame header declares counts: a frame announcing more than
     * the bound is refused at its first bytes, not once they have arrived. */
    if (l->rx.len + len + lws_remaining_packet_payload(wsi) > t->cfg->max_message_size) {
        static const char why[] = "message larger than max_message_size";

        BS_STAT_ADD(&t->engine->stats, errors, 1);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why, sizeof(why) - 1);
        return -1;
    }
    started = l->rx.len > 0;
    done = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
    /* A message begun must end within request_timeout: a fragment that
     * never ends would hold its bytes for as long as the socket lives. */
    if (!started && !done && !((bs_tlink_t *)l)->killing)
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_REASON_BASE, t->cfg->request_timeout);
    if (bs_buf_append(&l->rx, in, len))
        return -1;
    if (!done)
        return 0;
    if (started && !((bs_tlink_t *)l)->killing)
        lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
    /* A message that is not a Bayeux batch gets its 400 error, then a 1007 close. */
    queued = __atomic_load_n(&t->engine->stats.messages_out, __ATOMIC_RELAXED);
    if (bs_engine_receive(t->engine, l, l->rx.ptr, l->rx.len, &l->out) != 200)
        l->close_code = LWS_CLOSE_STATUS_INVALID_PAYLOAD;
    bs_buf_free(&l->rx);
    bs_transport_note_input(t, wsi, queued);
    /* A client that sends and never reads cannot grow our replies forever. */
    if (l->out.len > 4 * t->cfg->max_message_size + 65536) {
        static const char why[] = "too many unread replies";

        lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)why, sizeof(why) - 1);
        return -1;
    }
    if (l->out.len || (l->held && bs_engine_due(t->engine, l, bs_now_ms())))
        lws_callback_on_writable(wsi);
    bs_transport_arm(t, l);
    return 0;
}

int bs_ws_write(bs_transport_t *t, struct lws *wsi, bs_link_t *l)
{
    int64_t now = bs_now_ms();
    int round;

    for (round = 0; round < MAX_WRITES_PER_CALLBACK; round++) {
        bs_client_t *c = l->client;
        int due = l->held && bs_engine_due(t->engine, l, now);
        uint32_t queued = c && c->link == l ? c->queue.len : 0;
        unsigned char *p;
        size_t len;
        int n;

        if (!l->out.len && !due && !queued) {
            if (l->close_code) {
                static const char why[] = "not a Bayeux message";

                lws_close_reason(wsi, (enum lws_close_status)l->close_code, (unsigned char *)why,
                                 sizeof(why) - 1);
                return -1;
            }
            return 0;
        }
        if (!l->out.len && !due && (queued == 1 || bs_ring_at(&c->queue, 0)->len > BS_BATCH_BYTES)) {
            /* One message: write the shared frame itself, no copy. */
            bs_frame_t *f = bs_ring_at(&c->queue, 0);

            n = lws_write(wsi, BS_FRAME_DATA(f), f->len, LWS_WRITE_TEXT);
            len = f->len;
            bs_ring_drop(&c->queue, 1);
        } else {
            if (due)
                bs_engine_answer(t->engine, l);
            if (bs_tx_begin(t) || bs_buf_append(&t->tx, "[", 1) ||
                bs_buf_append(&t->tx, l->out.ptr, l->out.len))
                return -1;
            if (queued)
                bs_tx_take_frames(t, c, BS_BATCH_BYTES, l->out.len > 0);
            if (bs_buf_append(&t->tx, "]", 1))
                return -1;
            bs_buf_reset(&l->out);
            p = (unsigned char *)t->tx.ptr + BS_PRE;
            len = t->tx.len - BS_PRE;
            n = lws_write(wsi, p, len, LWS_WRITE_TEXT);
        }
        if (n < (int)len)
            return -1;
        __atomic_fetch_add(&t->conn->bytes_out, len, __ATOMIC_RELAXED);
        /* Asking whether the pipe is choked costs a poll() of its own: only
         * worth it when there is more to write now. A held connect that is
         * not yet due is not more to write: nearly every subscriber has one. */
        if (!l->out.len && !(c && c->link == l && c->queue.len) && !(l->held && bs_engine_due(t->engine, l, now)) &&
            !l->close_code)
            return 0;
        if (lws_send_pipe_choked(wsi))
            break;
    }
    lws_callback_on_writable(wsi);
    return 0;
}
