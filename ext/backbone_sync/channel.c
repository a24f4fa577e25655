/*
 * channel.c: channel names and patterns, the rules on who may publish or
 * subscribe where, and subscription tokens. Layer: pure codecs (no state).
 * Thread: any.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "channel.h"

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

    if (len < 2 || len > BS_CHANNEL_MAX || s[0] != '/')
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

/* Under `root` ("/meta"): root itself, or root followed by a segment. */
static int under(const char *s, size_t len, const char *root, size_t rlen)
{
    return len >= rlen && memcmp(s, root, rlen) == 0 && (len == rlen || s[rlen] == '/');
}

int bs_channel_kind(const char *s, size_t len)
{
    if (!bs_channel_valid_pattern(s, len))
        return BS_CHANNEL_INVALID;
    if (under(s, len, "/meta", 5))
        return BS_CHANNEL_META;
    if (under(s, len, "/service", 8))
        return BS_CHANNEL_SERVICE;
    return BS_CHANNEL_PLAIN;
}

int bs_channel_publishable(const char *s, size_t len)
{
    return bs_channel_valid_name(s, len) && bs_channel_kind(s, len) == BS_CHANNEL_PLAIN;
}

int bs_channel_subscribable(const char *s, size_t len)
{
    return bs_channel_kind(s, len) == BS_CHANNEL_PLAIN;
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
