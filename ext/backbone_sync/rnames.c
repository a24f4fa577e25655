/*
 * rnames.c: the names the Redis backplane uses (see rnames.h).
 * Layer: pure codecs. Thread: any.
 */
#include <stdio.h>
#include <string.h>

#include "rnames.h"

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash. */
static unsigned crc16(const char *p, size_t len)
{
    unsigned crc = 0;

    while (len--) {
        crc ^= (unsigned)(unsigned char)*p++ << 8;
        for (int i = 0; i < 8; i++)
            crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
        crc &= 0xffff;
    }
    return crc;
}

unsigned bs_rnames_slot(const char *name, size_t len)
{
    const char *open = memchr(name, '{', len), *close;

    /* Redis's rule: the first "{", then the first "}" after it, with
     * something between them. */
    if (open && (close = memchr(open + 1, '}', len - (size_t)(open + 1 - name))) && close > open + 1)
        return crc16(open + 1, (size_t)(close - open - 1)) & (BS_RSLOTS - 1);
    return crc16(name, len) & (BS_RSLOTS - 1);
}

int bs_rnames_partition(const char *channel, size_t len)
{
    return (int)(crc16(channel, len) % BS_RPARTITIONS);
}

int bs_rnames_everywhere(const char *name, size_t len)
{
    return len && name[len - 1] == '*';
}

int bs_rnames_listens_in(const char *name, size_t len, uint64_t partitions)
{
    return bs_rnames_everywhere(name, len) || (partitions >> bs_rnames_partition(name, len) & 1);
}

int bs_rnames_name(bs_buf_t *out, const char *prefix, int partition, int kind, const char *channel,
                   size_t len)
{
    static const char *const kinds[] = { "settings", "epoch:", "offset:", "history:", "events:" };
    char tag[16];

    bs_buf_reset(out);
    if (bs_buf_append_str(out, prefix))
        return -1;
    if (partition != BS_RNO_PARTITION) {
        snprintf(tag, sizeof(tag), "{%d}", partition);
        if (bs_buf_append_str(out, tag))
            return -1;
    }
    if (kind == BS_RKIND_SETTINGS)
        return bs_buf_append_str(out, kinds[kind]);
    if (kind != BS_RKIND_PUBSUB)
        return bs_buf_append_str(out, kinds[kind]) || bs_buf_append(out, channel, len);
    /* Exactly what each matches: two stars are every channel below /a, at any
     * depth ("tree:/a"); one star the channels one segment below it ("kids:/a"). */
    if (len >= 3 && memcmp(channel + len - 3, "/**", 3) == 0)
        return bs_buf_append(out, "tree:", 5) || bs_buf_append(out, channel, len - 3);
    if (len >= 2 && memcmp(channel + len - 2, "/*", 2) == 0)
        return bs_buf_append(out, "kids:", 5) || bs_buf_append(out, channel, len - 2);
    return bs_buf_append(out, "ch:", 3) || bs_buf_append(out, channel, len);
}
