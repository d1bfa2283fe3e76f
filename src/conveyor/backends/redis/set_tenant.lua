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
if ARGV[6] == '' then
    redis.call('HDEL', QP .. 'tm', tenant)
else
    redis.call('HSET', QP .. 'tm', tenant, ARGV[6])
end
-- A higher weight or cap may make jobs claimable.
wake(QP)
return 0
