/*
 * ruby_publish.c: the shape of a delivery and the making of epochs, for
 * Ruby publishers that do not go through a server (RedisPublisher). The
 * core owns both rules (bs_delivery_head in bayeux.c, bs_random_id in
 * util.c); this file only lends them to Ruby, so a message that enters the
 * backplane from Ruby is byte for byte the one the C server would build.
 * Runs in Ruby threads with the GVL held.
 */
#include "ruby_bindings.h"

#include "bayeux.h"
#include "util.h"

static VALUE eChannelError = Qnil, eError = Qnil;

/*
 * call-seq:
 *   BackboneSync.delivery_head(channel, encoded_data) -> String
 *
 * The delivery of +encoded_data+ (JSON text, as BackboneSync.encode_json
 * gives it) to +channel+, up to its ext object, exactly as the C server
 * builds it and as lib/backbone_sync/publish.lua expects it:
 *
 *   BackboneSync.delivery_head("/sync/users", '{"id":1}')
 *   # => '[{"channel":"/sync/users","data":{"id":1},"ext":{'
 *
 * The script (or the server) appends the offset and the epoch. Raises
 * BackboneSync::ChannelError when +channel+ is not one a message may be
 * published to (BackboneSync.channel?). +encoded_data+ is taken as given.
 */
static VALUE BackboneSync_delivery_head(VALUE self, VALUE channel, VALUE data)
{
    bs_buf_t buf;
    VALUE head;

    (void)self;
    StringValue(channel);
    StringValue(data);
    if (!bs_channel_publishable(RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel)))
        rb_raise(eChannelError,
                 "invalid channel %" PRIsVALUE ": use /segment/segment with letters, "
                 "digits and -_!~()$@ (no wildcards, not under /meta or /service)",
                 rb_inspect(channel));

    bs_buf_init(&buf);
    if (bs_delivery_head(&buf, RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel), RSTRING_PTR(data),
                         (size_t)RSTRING_LEN(data), NULL, 0, NULL, 0)) {
        bs_buf_free(&buf);
        rb_memerror();
    }
    head = rb_utf8_str_new(buf.ptr, (long)buf.len);
    bs_buf_free(&buf);
    RB_GC_GUARD(channel);
    RB_GC_GUARD(data);
    return head;
}

/*
 * call-seq:
 *   BackboneSync.new_epoch -> String
 *
 * A fresh channel epoch, as the C server makes them: 16 base-36 digits from
 * the kernel's CSPRNG (e.g. "k2n8q0w7x1c5v9b3"). Raises BackboneSync::Error
 * when the kernel gives no randomness.
 */
static VALUE BackboneSync_new_epoch(VALUE self)
{
    char epoch[BS_EPOCH_LEN + 1];

    (void)self;
    if (bs_random_id(epoch, BS_EPOCH_LEN))
        rb_raise(eError, "no randomness from the kernel (getrandom failed) to make an epoch");
    return rb_utf8_str_new(epoch, BS_EPOCH_LEN);
}

void Init_BackboneSync_Publish(VALUE mBackboneSync)
{
    eChannelError = bs_ruby_error_class("ChannelError");
    eError = bs_ruby_error_class("Error");

    rb_define_module_function(mBackboneSync, "delivery_head", BackboneSync_delivery_head, 2);
    rb_define_module_function(mBackboneSync, "new_epoch", BackboneSync_new_epoch, 0);
}
