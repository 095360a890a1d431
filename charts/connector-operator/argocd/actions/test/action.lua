-- Asks for a test of the token now (the call a workload makes with it): a new token in
-- openconnectors.io/test-requested-at, echoed in status.lastHandledTestAt; the answer is the
-- TokenVerified condition.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["openconnectors.io/test-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
