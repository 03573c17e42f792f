// Drives the stock @looker/sdk-node through workspace-proxy for tests/test_clients_node.py.
//
// SDK settings come only from the environment (LOOKERSDK_BASE_URL, LOOKERSDK_CLIENT_ID,
// LOOKERSDK_CLIENT_SECRET, LOOKERSDK_VERIFY_SSL, LOOKERSDK_TIMEOUT), as a user of the SDK would
// configure it. DRIVE_OWN_WORKSPACE / DRIVE_OTHER_WORKSPACE name the team's pinned workspace and
// the one the driver tries to switch to; DRIVE_SWITCH_OWN=1 also "switches" to the pinned one.
//
// Prints exactly one line that starts with "RESULT " followed by JSON (the SDK prints its own
// noise, e.g. "AbortSignal.timeout is not defined", on stdout too). Exit 0 when every step ran (an
// expected refusal is a result, not a failure), 1 when a step threw, 2 when the watchdog fired:
// the SDK applies no timeout of its own (sdk-rtl 21.6.5 on Node 20), so a held request would
// otherwise hold this process forever.
import { LookerNodeSDK, NodeSettings } from '@looker/sdk-node'

const WATCHDOG_MS = Number(process.env.DRIVE_WATCHDOG_MS ?? 15000)
const OWN = process.env.DRIVE_OWN_WORKSPACE ?? 'dev'
const OTHER = process.env.DRIVE_OTHER_WORKSPACE ?? 'production'

const watchdog = setTimeout(() => {
  report({ failed: `watchdog: no answer within ${WATCHDOG_MS} ms` }, 2)
}, WATCHDOG_MS)

function report(result, code) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`, () => process.exit(code))
}

async function updateSession(sdk, workspaceId) {
  // A refusal comes back as an SDKResponse {ok: false, error}; keep it as the result.
  const answer = await sdk.update_session({ workspace_id: workspaceId })
  return answer.ok
    ? { ok: true, workspace: answer.value.workspace_id }
    : { ok: false, message: answer.error?.message ?? String(answer.error) }
}

async function main() {
  const sdk = LookerNodeSDK.init40(new NodeSettings('LOOKERSDK'))
  const out = {}
  out.me = (await sdk.ok(sdk.me())).id // the SDK logs in to the proxy first
  out.workspace = (await sdk.ok(sdk.session())).workspace_id
  const models = await sdk.ok(sdk.all_lookml_models({}))
  out.explores = models.flatMap((m) => (m.explores ?? []).map((e) => `${m.name}.${e.name}`))
  if (process.env.DRIVE_SWITCH_OWN === '1') out.update_own = await updateSession(sdk, OWN)
  out.update_other = await updateSession(sdk, OTHER)
  out.after_refusal = (await sdk.ok(sdk.session())).workspace_id
  const before = sdk.authSession.activeToken.access_token
  out.logout = await sdk.authSession.logout() // DELETE /api/4.0/logout: ends the proxy token
  out.authenticated_after_logout = sdk.authSession.isAuthenticated()
  // The logged-out token, sent by hand the way the SDK sends it: the proxy must refuse it.
  const stale = await fetch(`${process.env.LOOKERSDK_BASE_URL}/api/4.0/session`, {
    headers: { Authorization: `Bearer ${before}` },
  })
  out.logged_out_token_status = stale.status
  out.after_relogin = (await sdk.ok(sdk.session())).workspace_id // the SDK logs in again
  out.new_token_after_relogin = sdk.authSession.activeToken.access_token !== before
  return out
}

main().then(
  (out) => {
    clearTimeout(watchdog)
    report(out, 0)
  },
  (err) => {
    clearTimeout(watchdog)
    report({ failed: String(err?.stack ?? err) }, 1)
  },
)
