# frozen_string_literal: true

class NoteObserver < ActiveRecord::Observer
  include BackboneSync::Rails::Faye::Observer
end
