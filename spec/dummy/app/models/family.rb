# frozen_string_literal: true

# Declares no push: saving it must not broadcast anything.
class Family < ApplicationRecord
  has_many :members
end
