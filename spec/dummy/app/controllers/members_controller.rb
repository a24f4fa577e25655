# frozen_string_literal: true

# The JSON API Backbone.sync talks to, and the page that loads the assets.
class MembersController < ApplicationController
  def index
    respond_to do |format|
      format.html
      format.json { render json: Member.order(:id) }
    end
  end

  def show
    render json: Member.find(params[:id])
  end

  def create
    member = Member.new(member_params)
    if member.save
      render json: member, status: :created
    else
      render json: { errors: member.errors }, status: :unprocessable_entity
    end
  end

  # Members have a lock_version (it orders the pushes): when another request
  # saved this member between our read and our write, read it again and
  # apply this request's change on top, as the last writer would without
  # the lock. Bounded: a member renamed this often by others is answered 409.
  UPDATE_ATTEMPTS = 10

  def update
    attempts = 0
    begin
      member = Member.find(params[:id])
      saved = member.update(member_params)
    rescue ActiveRecord::StaleObjectError
      attempts += 1
      retry if attempts < UPDATE_ATTEMPTS
      return render json: { errors: { base: ["saved by someone else meanwhile; try again"] } }, status: :conflict
    end
    if saved
      render json: member
    else
      render json: { errors: member.errors }, status: :unprocessable_entity
    end
  end

  def destroy
    Member.find(params[:id]).destroy!
    head :no_content
  end

  private

  def member_params
    params.require(:member).permit(:name, :email, :family_id)
  end
end
