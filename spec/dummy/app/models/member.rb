# frozen_string_literal: true

class Member < ApplicationRecord
  belongs_to :family, optional: true

  push :create  => :collections,
       :update  => [:collections, :instances],
       :destroy => [:collections, :instances]

  validates :name, presence: true
end
