-- finish_claim: apply a batch of outcomes, then claim, in one atomic call and one round
-- trip (the worker's steady state: the slots its finished jobs freed are refilled).
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3]  n, the number of claim arguments that follow
-- ARGV[4 .. 3+n]  claim.lua's ARGV[3..]: lease token base, worker, lease seconds, task
--   caps (JSON), promote limit, limit, queue prefixes in serving order
-- ARGV[4+n ..]  finish.lua's ARGV[3..]: 6 fields per outcome
-- Returns {finish.lua's reply, claim.lua's reply}. The outcomes are applied first, so
-- the slots, task caps and tenant caps they free count for the claim.
local now = clock(ARGV[1])
local G = ARGV[2]
local n = tonumber(ARGV[3])
local applied = finish_outcomes(now, G, ARGV, 4 + n)
return { applied, claim_jobs(now, G, ARGV, 4, 3 + n) }
