# frozen_string_literal: true

# Loaded into a fresh SQLite database by the specs (and `rake db:schema:load`).
ActiveRecord::Schema.define do
  create_table :families, force: true do |t|
    t.string :name
    t.timestamps
  end

  create_table :members, force: true do |t|
    t.string :name
    t.string :email
    t.references :family
    # Orders pushed updates by commit (the push's version), and makes
    # concurrent saves of one member retry rather than overwrite blindly.
    t.integer :lock_version, default: 0, null: false
    t.timestamps
  end

  # Observed by NoteObserver (the observer style).
  create_table :notes, force: true do |t|
    t.string :body
    t.timestamps
  end

  # Spec-only models declared in spec/rails.
  create_table :tasks, force: true do |t|
    t.string :title
    t.references :project
    t.integer :lock_version, default: 0, null: false
    t.timestamps
  end

  create_table :projects, force: true do |t|
    t.string :name
  end

  # The outbox (BackboneSync::Outbox), as the install generator's migration makes it.
  create_table :backbone_sync_events, force: true do |t|
    t.string :channel, null: false
    t.text :payload, null: false, limit: 16_777_215
    t.string :event_id, null: false, limit: 128
    t.bigint :available_at, null: false
    t.string :claimed_by
    t.datetime :created_at, null: false
    t.index :event_id, unique: true
    t.index :available_at
    t.index %i[channel id]
  end
end
