/*
 * json.h: parsing inbound Bayeux batches with yajl, escaping strings for
 * replies, and the UTF-8 check (json.c). Layer: pure codecs. Thread: the
 * service thread parses; bs_json_str and bs_utf8_valid are for any thread.
 */
#ifndef BS_JSON_H
#define BS_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The longest ext.event_id a publish may carry: the key by which a channel's
 * history drops a message published twice. */
#define BS_EVENT_ID_MAX 128

typedef struct bs_span {
    uint32_t off;
    uint32_t len;
} bs_span_t;

typedef struct bs_msg {
    bs_span_t raw_id;                      /* spans point into the input */
    bs_span_t raw_data;
    bs_span_t raw_subscription;
    bs_span_t raw_ext;                     /* ext without its "secret" member, rebuilt */
    const char *channel;                   /* decoded strings (arena), or NULL */
    const char *client_id;
    const char *connection_type;
    const char *version;
    const char *secret;
    const char *token;
    const char *subs;                      /* nsubs NUL-separated names */
    const char *since_epoch;               /* ext.since of a subscribe, or NULL */
    const char *event_id;                  /* ext.event_id of a publish, or NULL; it stays in ext */
    uint64_t since_offset;
    int has_since;
    uint32_t nsubs;
    uint32_t conn_types;                   /* BS_CT_* bits offered by a handshake */
    int has_conn_types;
    int has_id, has_data, has_ext, has_subscription;
    const char *bad;                       /* why the message is refused (a wrong type, a repeated member), or NULL */
    int64_t advice_timeout;                /* ms, or -1 */
    size_t channel_len, client_id_len, secret_len, token_len, event_id_len;
} bs_msg_t;

enum { BS_CT_LONG_POLLING = 1, BS_CT_CROSS_ORIGIN = 2, BS_CT_CALLBACK = 4, BS_CT_WEBSOCKET = 8,
       BS_CT_EVENTSOURCE = 16, BS_CT_IN_PROCESS = 32, BS_CT_OTHER = 64 };

typedef struct bs_batch {
    bs_msg_t *msgs;
    uint32_t n;
    bs_buf_t arena;                        /* decoded strings */
    bs_buf_t ext;                          /* rebuilt ext objects; raw_ext spans point here */
    const char *error;                     /* why the whole batch was refused, or NULL */
} bs_batch_t;

/* Parses json[0..len) as an array of Bayeux messages (or one message).
 * Returns 0, or -1 with b->error set. Call bs_batch_free either way. */
int bs_batch_parse(bs_batch_t *b, const char *json, size_t len, int max_depth, int max_batch);
void bs_batch_free(bs_batch_t *b);
uint32_t bs_conn_type_bit(const char *s);

/* 1 when s[0..len) is valid UTF-8 (RFC 3629), else 0. Any thread. */
int bs_utf8_valid(const char *s, size_t len);
/* 1 when the JSON text s escapes half a UTF-16 surrogate pair ("\ud800"
 * alone): valid JSON, not valid Unicode; strict parsers (Ruby's) reject
 * the whole message. The text must be valid JSON. */
int bs_json_lone_surrogate(const char *s, size_t len);
/* 1 when s[0..len) may be an ext.event_id: 1 to BS_EVENT_ID_MAX bytes, no NUL. */
int bs_event_id_valid(const char *s, size_t len);
/* Appends s as a JSON string (quoted and escaped). */
int bs_json_str(bs_buf_t *b, const char *s, size_t len);

#endif
