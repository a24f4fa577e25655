/*
 * channel.h: what a channel name is, and who may do what with it; signed
 * subscription tokens (channel.c). The one owner of the channel rules: the
 * engine, the server's in-process publish and the Ruby layer all ask here.
 * Layer: pure codecs. Thread: any.
 */
#ifndef BS_CHANNEL_H
#define BS_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

/* Longer names are not channels: one name is copied into the registry and
 * the history of every node, and fan-out looks up each of its prefixes. */
#define BS_CHANNEL_MAX 512

/* Faye's grammar: /seg(/seg)* with seg = [A-Za-z0-9-_!~()$@]+, at most
 * BS_CHANNEL_MAX bytes.
 * Return 1 when valid, 0 otherwise. A pattern is a name, or a name prefix
 * followed by a final wildcard segment, one star or two (a lone "/" + stars too). */
int bs_channel_valid_name(const char *s, size_t len);
int bs_channel_valid_pattern(const char *s, size_t len);

/* Where a name or pattern lives: /meta and below belong to the protocol,
 * /service and below are for the server only (nobody subscribes there). */
enum { BS_CHANNEL_INVALID = 0, BS_CHANNEL_PLAIN, BS_CHANNEL_META, BS_CHANNEL_SERVICE };
int bs_channel_kind(const char *s, size_t len);

/* 1 when a message may be published to s: a valid name, not under /meta or
 * /service. */
int bs_channel_publishable(const char *s, size_t len);
/* 1 when a client may subscribe to s (a name or pattern): valid, not under
 * /meta or /service. */
int bs_channel_subscribable(const char *s, size_t len);

/* 1 when name (a channel or pattern) is matched by pattern. */
int bs_channel_matches(const char *pattern, const char *name, size_t len);
/* 1 when pattern p and subscription s (each a name or pattern) can share a channel. */
int bs_channel_overlaps(const char *p, const char *s, size_t slen);

/* A token is "<expires>.<hex>" where <expires> is Unix seconds in decimal and
 * <hex> is lowercase hex HMAC-SHA256(secret, channel + "\n" + <expires>).
 * Ruby's BackboneSync.sign makes the same string with OpenSSL::HMAC.
 * Returns 1 when the token is genuine and not expired at `now`, else 0. */
int bs_token_verify(const char *secret, const char *channel, size_t chlen,
                    const char *token, size_t toklen, int64_t now);

#endif
