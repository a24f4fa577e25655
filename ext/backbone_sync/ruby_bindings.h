/*
 * ruby_bindings.h: declarations shared by the Ruby binding files (ruby_*.c,
 * init.c). Only binding files include ruby.h; the C core never sees this.
 */
#ifndef BACKBONE_SYNC_RUBY_BINDINGS_H
#define BACKBONE_SYNC_RUBY_BINDINGS_H

/* Ruby 3.1's inline header functions leave parameters unused; -Wextra
 * stays on for our own code. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ruby.h>
#include <ruby/encoding.h>
#include <ruby/thread.h>
#pragma GCC diagnostic pop

#include "backbone_sync.h"

/* The BackboneSync module, set by Init_backbone_sync before the bindings. */
extern VALUE bs_mBackboneSync;

/* Looks up BackboneSync::<name> (defined in lib/backbone_sync/errors.rb) and
 * pins it so the GC never moves or frees it. Raises if errors.rb was not
 * loaded first. */
VALUE bs_ruby_error_class(const char *name);

/* Appends the JSON encoding of obj to out, which the caller has initialised
 * with bs_buf_init. Needs the GVL. Raises BackboneSync::EncodeError (or any
 * exception raised by an object's as_json/to_s); when it raises, out has been
 * freed, so the caller has nothing to clean up. */
void bs_ruby_json_encode(VALUE obj, bs_buf_t *out);

/* Raises ArgumentError unless event_id is nil or a String that
 * bs_event_id_valid accepts. */
void bs_ruby_check_event_id(VALUE event_id);

void Init_BackboneSync_JSON(VALUE mBackboneSync);
void Init_BackboneSync_Server(VALUE mBackboneSync);
void Init_BackboneSync_Publish(VALUE mBackboneSync);

#endif
