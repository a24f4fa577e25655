-- publish.lua: the one way a message enters the Redis backplane, used alike
-- by the C server (ext/backbone_sync/backplane.c) and by Ruby publishers
-- (BackboneSync::RedisPublisher). It gives the message the next offset of its
-- channel and the channel's epoch, keeps it in the channel's bounded history,
-- and fans it out to every node.
--
-- ARGV: prefix, channel, head, history_size, history_ttl, fresh_epoch
--   head is the delivery up to its ext object, ending in `"ext":{` or, when
--   ext already has members, in `"ext":{...,`.
local prefix, channel, head = ARGV[1], ARGV[2], ARGV[3]
local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local ekey = prefix .. 'epoch:' .. channel
local okey = prefix .. 'offset:' .. channel
local hkey = prefix .. 'history:' .. channel
local epoch = redis.call('GET', ekey)
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', ekey, epoch)
end
local offset = redis.call('INCR', okey)
local frame = head .. '"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}]'
local keep = math.max(ttl, 86400)
if size > 0 then
  redis.call('ZADD', hkey, offset, frame)
  redis.call('ZREMRANGEBYRANK', hkey, 0, -(size + 1))
  redis.call('EXPIRE', hkey, ttl)
end
redis.call('EXPIRE', ekey, keep)
redis.call('EXPIRE', okey, keep)
redis.call('PUBLISH', prefix .. 'fanout', channel .. '\n' .. offset .. '\n' .. epoch .. '\n' .. frame)
return offset
