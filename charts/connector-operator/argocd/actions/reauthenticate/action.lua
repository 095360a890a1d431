-- Asks for a re-authentication now, with nothing changed (a token the provider revoked, a
-- security rotation): a new token in openconnectors.io/reauthenticate-requested-at, which the
-- operator echoes in status.lastHandledReauthenticateAt once carried out. Under
-- spec.reauthentication: Manual it waits for an approval like any other re-authentication.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["openconnectors.io/reauthenticate-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
