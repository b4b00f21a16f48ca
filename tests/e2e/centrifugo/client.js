// The seed's browser code, run on Node with the real centrifuge client (and ws as its WebSocket):
// connect with a JWT, `await centrifuge.rpc('update_user_status', {})`, stay connected.
// Usage: node client.js <ws url> <jwt> <stay ms>. Prints one JSON object per line for
// tests/e2e/test_centrifugo_real.py; exit code 1 when the RPC failed.
'use strict';
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const [url, token, stayMs] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const errorOf = (e) => ({ code: e && e.code, message: e && e.message, temporary: e && e.temporary });

const centrifuge = new Centrifuge(url, { token, websocket: WebSocket });
let rpcDone = false;

centrifuge.on('connected', async (ctx) => {
  out({ event: 'connected', client: ctx.client, transport: ctx.transport });
  if (rpcDone) return; // a reconnect: the test reports it as a disconnect already
  rpcDone = true;
  try {
    // The seed's line, as written.
    const result = await centrifuge.rpc('update_user_status', {});
    out({ event: 'rpc', result });
  } catch (e) {
    out({ event: 'rpc_error', error: errorOf(e) });
    process.exitCode = 1;
  }
  try {
    await centrifuge.rpc('no_such_method', {});
    out({ event: 'unknown_rpc', error: null });
  } catch (e) {
    out({ event: 'unknown_rpc', error: errorOf(e) });
  }
  setTimeout(() => {
    out({ event: 'done' });
    centrifuge.disconnect();
  }, Number(stayMs));
});
centrifuge.on('disconnected', (ctx) => out({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
centrifuge.on('connecting', (ctx) => out({ event: 'connecting', code: ctx.code, reason: ctx.reason }));
centrifuge.on('error', (ctx) => out({ event: 'error', error: String(ctx.error && ctx.error.message) }));
centrifuge.connect();
