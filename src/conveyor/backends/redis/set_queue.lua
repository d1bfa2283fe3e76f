-- set_queue: per-queue aging (seconds per priority level, '' = off); reschedules when
-- each ready job next moves up, from when it became ready and the levels it has climbed.
--
-- KEYS[1]  routing key   ARGV[1]  G   ARGV[2]  queue name   ARGV[3]  QP   ARGV[4]  aging
local G, QP = ARGV[1], ARGV[3]
redis.call('HSET', G .. 'qp', ARGV[2], QP)
redis.call('SADD', G .. 'queues', ARGV[2])
local aging = nil
if ARGV[4] == '' then
    redis.call('HDEL', QP .. 'meta', 'aging')
else
    aging = tonumber(ARGV[4])
    redis.call('HSET', QP .. 'meta', 'aging', ARGV[4])
end
-- Operator action: O(ready jobs of the queue).
redis.call('DEL', QP .. 'aging')
if aging then
    for _, id in ipairs(ready_ids(QP)) do
        local key = jkey(G, id)
        local f = redis.call('HMGET', key, 'priority', 'base_priority', 'ready_at', 'enqueued_at')
        local prio = tonumber(f[1])
        if prio > 0 then
            -- No ready_at: ready since it was enqueued (enqueue.lua does not write it).
            local ready_at = tonumber(f[3] or f[4])
            local age_at = ready_at + aging * (tonumber(f[2]) - prio + 1)
            redis.call('HSET', key, 'age_at', fmt(age_at))
            redis.call('ZADD', QP .. 'aging', fmt(age_at), id)
        else
            redis.call('HDEL', key, 'age_at')
        end
    end
else
    for _, id in ipairs(ready_ids(QP)) do
        redis.call('HDEL', jkey(G, id), 'age_at')
    end
end
wake(QP)
return 0
