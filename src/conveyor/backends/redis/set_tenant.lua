-- set_tenant: a tenant's weight and max_running in one queue.
--
-- KEYS[1]  routing key   ARGV[1]  G   ARGV[2]  queue name   ARGV[3]  QP
-- ARGV[4]  tenant ('' = default)   ARGV[5]  weight   ARGV[6]  max_running ('' = none)
local G, QP, tenant = ARGV[1], ARGV[3], ARGV[4]
redis.call('HSET', G .. 'qp', ARGV[2], QP)
redis.call('SADD', G .. 'queues', ARGV[2])
if tonumber(ARGV[5]) == 1 then
    redis.call('HDEL', QP .. 'tw', tenant)
else
    redis.call('HSET', QP .. 'tw', tenant, ARGV[5])
end
local counted = counts_running(QP)
if ARGV[6] == '' then
    redis.call('HDEL', QP .. 'tm', tenant)
else
    redis.call('HSET', QP .. 'tm', tenant, ARGV[6])
end
-- Running counts are kept only while the queue has tenant caps (see counts_running):
-- the first cap starts them from the leases (O(running jobs)), the last one's removal
-- drops them (they would go stale).
if counts_running(QP) ~= counted then
    drop_counts(QP, 'running:')
    if not counted then
        local set = {}
        for name, n in pairs(running_by_tenant(G, QP)) do
            set[#set + 1] = 'running:' .. name
            set[#set + 1] = n
        end
        for i = 1, #set, 1000 do
            redis.call('HSET', QP .. 'cnt', unpack(set, i, math.min(i + 999, #set)))
        end
    end
end
-- A higher weight or cap may make jobs claimable.
wake(QP)
return 0
