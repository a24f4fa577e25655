// The demo's members list: a Backbone.PushableCollection that follows
// /sync/members, so what another browser saves appears here at once, and
// what this page saves appears once (the origin token matches the
// broadcast of our own create with the model we already hold).
//
// The page marks its state for people and for spec/javascripts/demo:
// `#status[data-state]` is "connecting", "live" or "offline", and
// `#members[data-ready]` is set once the first fetch is in.

(function (root) {
  'use strict';

  var $ = root.jQuery, _ = root._, Backbone = root.Backbone, BackboneSync = root.BackboneSync;

  var Member = Backbone.Model.extend({
    defaults: { name: '' }
  });

  var Members = Backbone.PushableCollection.extend({
    model: Member,
    channel: 'members',                     // /sync/members
    // Oldest first; a member still being created goes last until it has an id.
    comparator: function (member) { return member.id == null ? Infinity : member.id; },

    initialize: function () {
      this.on('change:id', function () { this.sort(); });
    }
  });

  // One row: the name, or an input while renaming, and two buttons.
  var MemberView = Backbone.View.extend({
    tagName: 'li',
    className: 'member',

    events: {
      'click .rename': 'edit',
      'dblclick .name': 'edit',
      'click .delete': 'destroy',
      'keydown .edit': 'key',
      'blur .edit': 'save'
    },

    initialize: function () {
      this.listenTo(this.model, 'change', this.render);
      this.listenTo(this.model, 'remove', this.remove);
    },

    render: function () {
      if (this.editing) return this;
      var saved = !this.model.isNew();
      this.$el.attr({ 'data-id': saved ? this.model.id : '', 'data-cid': this.model.cid })
        .toggleClass('pending', !saved)
        .empty()
        .append($('<span class="name">').text(this.model.get('name')),
                $('<button type="button" class="rename">Rename</button>').prop('disabled', !saved),
                $('<button type="button" class="delete">Delete</button>').prop('disabled', !saved));
      return this;
    },

    edit: function () {
      if (this.editing || this.model.isNew()) return;
      this.editing = true;
      var input = $('<input class="edit" maxlength="100">').val(this.model.get('name'));
      this.$('.name').replaceWith(input);
      input.trigger('focus').trigger('select');
    },

    key: function (event) {
      if (event.key === 'Enter') this.save();
      if (event.key === 'Escape') this.done();
    },

    save: function () {
      if (!this.editing) return;
      var name = $.trim(this.$('.edit').val());
      this.done();
      if (name && name !== this.model.get('name')) this.model.save({ name: name });
    },

    done: function () {
      this.editing = false;
      this.render();
    },

    destroy: function () {
      this.model.destroy();
    }
  });

  var ListView = Backbone.View.extend({
    initialize: function () {
      this.listenTo(this.collection, 'add', this.added);
      this.listenTo(this.collection, 'sort', this.sorted);
    },

    added: function (member, collection) {
      var view = new MemberView({ model: member }).render(),
          index = collection.indexOf(member),
          after = index > 0 ? this.$el.children().eq(index - 1) : null;
      if (after && after.length) after.after(view.el);
      else this.$el.prepend(view.el);
    },

    // Rows follow the collection's order after a fetch.
    sorted: function () {
      var byCid = {};
      this.$el.children().each(function () { byCid[$(this).attr('data-cid')] = this; });
      this.collection.each(function (member) {
        if (byCid[member.cid]) this.$el.append(byCid[member.cid]);
      }, this);
    }
  });

  $(function () {
    var list = $('#members'), status = $('#status'), form = $('#new-member');
    if (!list.length) return;

    // After a restart, try again within a second rather than five.
    BackboneSync.configure({ clientOptions: { retry: 1 } });
    var client = BackboneSync.client();

    var setStatus = function (state, text) { status.attr('data-state', state).text(text); };
    client.bind('transport:up', function () { setStatus('live', 'live'); });
    client.bind('transport:down', function () { setStatus('offline', 'offline, reconnecting…'); });

    var members = root.members = new Members([], { client: client });
    members.url = list.attr('data-url');
    new ListView({ el: list, collection: members });

    // A PushableCollection's fetch is gap-free: it starts once the server
    // has acknowledged the subscribe, and what is pushed while it is in
    // flight is applied again over its older snapshot.
    members.fetch().then(function () { list.attr('data-ready', 'true'); });

    form.on('submit', function (event) {
      event.preventDefault();
      var input = form.find('input[name="name"]'), name = $.trim(input.val());
      if (!name) return;
      input.val('');
      members.create({ name: name }, {
        error: function (member) { if (member.isNew()) members.remove(member); }
      });
    });
  });
})(window);
