-- unlock: release lock KEYS[1] if ARGV[1] (owner) holds it.
--
-- KEYS[1]  the lock's hash   ARGV[1]  owner
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
