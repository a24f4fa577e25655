/*
 * init.c: the extension's entry point. Runs once, in the Ruby thread that
 * requires it; lib/backbone_sync.rb loads errors.rb before this.
 */
#include "ruby_bindings.h"

VALUE bs_mBackboneSync = Qnil;

VALUE bs_ruby_error_class(const char *name)
{
    VALUE klass;

    if (!rb_const_defined_at(bs_mBackboneSync, rb_intern(name)))
        rb_raise(rb_eLoadError,
                 "BackboneSync::%s is not defined: require \"backbone_sync\" "
                 "instead of loading the extension directly", name);
    klass = rb_const_get_at(bs_mBackboneSync, rb_intern(name));
    rb_gc_register_mark_object(klass);
    return klass;
}

void Init_backbone_sync(void)
{
    bs_mBackboneSync = rb_define_module("BackboneSync");
    rb_gc_register_mark_object(bs_mBackboneSync);

    Init_BackboneSync_JSON(bs_mBackboneSync);
    Init_BackboneSync_Server(bs_mBackboneSync);
    Init_BackboneSync_Publish(bs_mBackboneSync);
}
