# frozen_string_literal: true

# Broadcast by NoteObserver, not by push.
class Note < ApplicationRecord
end
